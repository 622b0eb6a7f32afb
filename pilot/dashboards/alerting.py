"""Grafana alert rules and a contact point, provisioned as a file.

Three rules, evaluated every minute against the historian (InfluxQL):

- ``pilot-priority-1``: a priority-1 alarm of the config (its ``<ALARM_ID>.STATE``) is active
  (state 1 or 2) — one alert instance per alarm;
- ``pilot-link-down``: a PLC link is down (``PLC.<name>.LINK`` last value 0);
- ``pilot-comm-loss``: the communication alarm ``PLC.<name>.COMM`` is raised.

Both notify the contact point ``pilot-operators`` (e-mail to ``$PILOT_ALERT_EMAIL``).
"""

from __future__ import annotations

import re

from controllers.alarms import AlarmManager

from .model import DATASOURCE

CONTACT_POINT = "pilot-operators"
FOLDER = "Pilot line"


def priority1_alarms(config) -> list[str]:
    """Alarm ids of priority 1 in the alarm manager built from the config."""
    return [d.alarm_id for d in AlarmManager(config.control.alarms, config.tags).defs if int(d.priority) == 1]


def _rule(uid: str, title: str, query: str, evaluator: dict, summary: str, lookback_s: int) -> dict:
    return {
        "uid": uid, "title": title, "condition": "C", "for": "0s", "noDataState": "OK",
        "execErrState": "Error", "labels": {"severity": "critical", "team": "operators"},
        "annotations": {"summary": summary}, "isPaused": False,
        "data": [
            {"refId": "A", "relativeTimeRange": {"from": lookback_s, "to": 0}, "datasourceUid": DATASOURCE["uid"],
             "model": {"refId": "A", "query": query, "rawQuery": True, "resultFormat": "time_series"}},
            {"refId": "B", "datasourceUid": "__expr__",
             "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last"}},
            {"refId": "C", "datasourceUid": "__expr__",
             "model": {"refId": "C", "type": "threshold", "expression": "B",
                       "conditions": [{"evaluator": evaluator}]}}]}


def alerting(config) -> dict:
    """The alerting provisioning document: rule group, contact point, notification policy."""
    ids = "|".join(re.escape(i) for i in priority1_alarms(config))
    p1 = _rule("pilot-priority-1", "priority-1 alarm active",
               f'SELECT last("value") FROM "alarm" WHERE "tag" =~ /^({ids})\\.STATE$/ AND "session" =~ /^$/ '
               'AND $timeFilter GROUP BY "tag"',
               {"type": "within_range", "params": [0.5, 2.5]},
               "{{ $labels.tag }}: priority-1 alarm active", 90 * 86400)
    link = _rule("pilot-link-down", "PLC link down",
                 'SELECT last("value") FROM "process" WHERE "tag" =~ /^PLC\\..+\\.LINK$/ '
                 'AND "session" =~ /^$/ AND $timeFilter GROUP BY "tag"',
                 {"type": "lt", "params": [0.5]}, "{{ $labels.tag }}: PLC link down", 86400)
    comm = _rule("pilot-comm-loss", "PLC communication alarm",
                 'SELECT last("value") FROM "alarm" WHERE "tag" =~ /^PLC\\..+\\.COMM$/ '
                 'AND "session" =~ /^$/ AND $timeFilter GROUP BY "tag"',
                 {"type": "gt", "params": [0.5]}, "{{ $labels.tag }}: PLC communication lost", 86400)
    return {"apiVersion": 1,
            "groups": [{"orgId": 1, "name": "pilot-alarms", "folder": FOLDER, "interval": "1m",
                        "rules": [p1, link, comm]}],
            "contactPoints": [{"orgId": 1, "name": CONTACT_POINT, "receivers": [
                {"uid": "pilot-operators-email", "type": "email",
                 "settings": {"addresses": "${PILOT_ALERT_EMAIL}", "singleEmail": True}}]}],
            "policies": [{"orgId": 1, "receiver": CONTACT_POINT, "group_by": ["alertname", "tag"]}]}
