{% if event == "check" -%}
The check {{ check.name }} on {{ node.name }} ({{ node.addr }}) switched from {{ old_state|upper }} to {{ state|upper }} at {{ time }} UTC with the output:

{{ output }}
{% if check.long_output %}
{{ check.long_output }}
{% endif %}
{%- elif event == "group" -%}
The group {{ group }} was {{ "added to" if modification == "add" else "removed from" }} {{ node.name }} ({{ node.addr }}) at {{ time }} UTC.
{%- elif event == "compliance" -%}
The compliance {{ compliance.display_name }} ({{ compliance.name }}, {{ compliance.mode }}) on {{ node.name }} ({{ node.addr }}) did change state from {{ old_state }} to {{ state }} at {{ time }} UTC:

{{ output }}
{%- else -%}
The node {{ member.name }} ({{ member.addr }}) is {{ member.state }} (was {{ member.old_state }}), seen by {{ node.name }} at {{ time }} UTC.
{%- endif %}

-- 
opsbro on {{ node.name }}
