"""Generated traffic against the OpenAPI schema (schemathesis, in process), and nasty bodies.

At least 2,000 generated cases, valid and invalid, over every operation: no server error,
every documented response conforms to its schema, invalid input is rejected with a 4xx.
Then hand-made bodies schemathesis does not produce (NaN, Infinity, 1e400, huge integers,
NUL bytes, 100,000-deep JSON, invalid UTF-8, oversized): never a 5xx, always the error shape.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup

from serving.credentials import KeyScope
from serving.security import required_scope

MIN_CASES = 2_000
#: Nonconforming responses reported to their owner and tolerated until fixed (none now).
KNOWN_NONCONFORMING: set[tuple[str, str, int]] = set()


def test_generated_cases_get_no_server_error_and_conform_to_the_schema(stack_factory, keys):
    stack = stack_factory()
    schema = schemathesis.openapi.from_asgi("/openapi.json", stack.app)

    @schema.auth(refresh_interval=None)
    class ApiKey:
        """The key each case needs; schemathesis leaves it out of cases that test a missing
        or invalid key (the spec's security schemes), which must get 401."""

        def get(self, case, context):
            admin_only = required_scope(case.method.upper(), case.path) == KeyScope.admin
            return keys.admin if admin_only else keys.secret

        def set(self, case, data, context):
            case.headers = {**(case.headers or {}), "X-API-Key": data}

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/decisions",
        "/v1/decisions/batch",
        "/v1/events",
        "/v1/offers",
    }
    strategy = st.one_of(
        [op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode]
    )
    statuses: dict[int, int] = {}
    server_errors: list[str] = []
    failures: dict[tuple[str, str, int], str] = {}

    @given(case=strategy)
    @settings(
        max_examples=MIN_CASES + 200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
        if case.meta is not None and case.meta.generation.mode == GenerationMode.NEGATIVE:
            checks.append(negative_data_rejection)
        response = case.call()
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            server_errors.append(f"{case.method} {case.path}: {response.text[:200]}")
        try:
            case.validate_response(response, checks=checks)
        except (
            Failure,
            FailureGroup,
        ) as exc:  # schemathesis failures; collect them all, not the first
            failures.setdefault((case.method, case.path, response.status_code), str(exc)[:600])

    run()
    total = sum(statuses.values())
    assert total >= MIN_CASES, statuses
    assert server_errors == []
    unexpected = {k: v for k, v in failures.items() if k not in KNOWN_NONCONFORMING}
    assert unexpected == {}, list(failures.items())
    assert sum(n for s, n in statuses.items() if 400 <= s < 500) > 0  # invalid input seen
    assert sum(n for s, n in statuses.items() if s == 200) > 0  # and valid input served


DEEP = "[" * 100_000 + "]" * 100_000
NASTY = [
    ("/v1/decisions", b'{"customer_id": "c1", "touchpoint": "web_home", "context": {"x": NaN}}'),
    (
        "/v1/decisions",
        b'{"customer_id": "c1", "touchpoint": "web_home", "context": {"x": Infinity}}',
    ),
    ("/v1/decisions", b'{"customer_id": "c1", "touchpoint": "web_home", "limit": 1e400}'),
    ("/v1/decisions", b'{"customer_id": "c1", "touchpoint": "web_home", "limit": -Infinity}'),
    (
        "/v1/decisions",
        ('{"customer_id": "c1", "touchpoint": "web_home", "limit": 1' + "0" * 5000 + "}").encode(),
    ),
    (
        "/v1/decisions",
        ('{"customer_id": "c1", "touchpoint": "web_home", "limit": 1' + "0" * 400 + "}").encode(),
    ),
    ("/v1/decisions", b'{"customer_id": "a\\u0000b", "touchpoint": "web_home"}'),
    ("/v1/decisions", b'{"customer_id": "c1", "touchpoint": "web\\u0000home"}'),
    (
        "/v1/decisions",
        b'{"customer_id": "c1", "touchpoint": "web_home", "context": {"k\\u0000": "v\\u0000"}}',
    ),
    ("/v1/decisions", DEEP.encode()),
    (
        "/v1/decisions",
        (
            '{"customer_id": "c1", "touchpoint": "web_home", "context": '
            + '{"a": ' * 2_000
            + "1"
            + "}" * 2_001
        ).encode(),
    ),
    ("/v1/decisions", b'{"customer_id": "\xff\xfe", "touchpoint": "web_home"}'),
    ("/v1/decisions", b""),
    ("/v1/decisions", b"null"),
    ("/v1/decisions", b"[]"),
    (
        "/v1/decisions",
        json.dumps({"customer_id": "x" * 500_000, "touchpoint": "web_home"}).encode(),
    ),
    ("/v1/decisions/batch", b'{"touchpoint": "web_home", "customer_ids": ["c1", NaN]}'),
    (
        "/v1/decisions/batch",
        json.dumps({"touchpoint": "web_home", "customer_ids": ["\u0000"] * 3}).encode(),
    ),
    (
        "/v1/events",
        b'{"events": [{"event_id": "e", "decision_id": "d", "offer_id": "o", "type": "click", "ts": "2026-06-01T12:00:00Z", "revenue": NaN}]}',
    ),
    (
        "/v1/events",
        b'{"events": [{"event_id": "e", "decision_id": "d", "offer_id": "o", "type": "click", "ts": "2026-06-01T12:00:00Z", "revenue": 1e400}]}',
    ),
    (
        "/v1/events",
        b'{"events": [{"event_id": "\\u0000", "decision_id": "d", "offer_id": "o", "type": "click", "ts": "99999-01-01T00:00:00Z"}]}',
    ),
    ("/v1/events", b'{"events": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
]


@pytest.mark.parametrize("path, body", NASTY, ids=[f"{i}-{p}" for i, (p, _) in enumerate(NASTY)])
def test_nasty_bodies_never_cause_a_server_error(stack, keys, path, body):
    response = stack.client.post(
        path, content=body, headers={**keys.headers("secret"), "content-type": "application/json"}
    )
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        error = response.json()
        assert error["detail"] and isinstance(error["errors"], list)
        assert len(response.content) < 5_000  # a huge input is never echoed back whole
