"""Rule-based alerts on the live vitals (see the README, "Alerts").

Modules, in data-flow order: ``rules`` (YAML rules, validated, line-precise errors),
``messages`` (the MQTT boundary: vitals in, ack/silence commands, alert messages out),
``state`` (the pure alert state machine), ``webhook`` (Standard Webhooks signature and the
Alertmanager body), ``outbox`` (durable SQLite outbox), ``delivery`` (MQTT / InfluxDB / webhook
fan-out and the retrying sender), ``service`` (the asyncio service), ``cli`` (``p2es alerts``),
``receiver`` (a small verifying webhook receiver for trials and tests).
"""
