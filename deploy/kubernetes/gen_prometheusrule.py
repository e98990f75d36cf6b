#!/usr/bin/env python3
"""Writes prometheusrule.yaml from ../prometheus/recording.yml and
alerts.yml (the same groups, indented under spec). Standard library only."""
import pathlib

HERE = pathlib.Path(__file__).parent
HEADER = """\
# Prometheus Operator: deploy/prometheus/recording.yml and alerts.yml as one
# PrometheusRule. Generated from those files (a test checks they agree):
#   python3 deploy/kubernetes/gen_prometheusrule.py
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: driftd
  namespace: monitoring
  labels: {release: prometheus}
spec:
  groups:
"""


def groups(name):
    lines = (HERE.parent / "prometheus" / name).read_text().splitlines()
    start = lines.index("groups:") + 1
    return ["  " + line if line.strip() else "" for line in lines[start:]]


body = groups("recording.yml") + groups("alerts.yml")
(HERE / "prometheusrule.yaml").write_text(HEADER + "\n".join(body).rstrip("\n") + "\n")
