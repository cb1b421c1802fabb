//! Rule backends (file-rights, package-install, repository, system-user, get-url).
