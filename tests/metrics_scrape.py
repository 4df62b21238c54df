"""Reading a running server's metrics and health endpoints over HTTP, as Prometheus and a load balancer do."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; an error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def scrape(base: str) -> Samples:
    status, content_type, body = get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample (0 when absent: a counter not moved yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def readiness(base: str) -> tuple[int, dict]:
    status, content_type, body = get(base + "/readyz")
    assert content_type == "application/json", content_type
    return status, json.loads(body)


def exported_names(base: str) -> set[str]:
    """Every metric the server describes (its ``# TYPE`` lines), samples or not."""
    import re

    return set(re.findall(r"^# TYPE (\S+) ", get(base + "/metrics")[2], re.M))
