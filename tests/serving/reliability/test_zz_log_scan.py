"""After the suite: no raw customer id, token or key in any log line it produced.

Runs last (file name). It scans the JSON log of this process and the logs of every server
process the durability tests started, for every secret and customer id the suite used.
"""

from __future__ import annotations

import json
import logging

from tests.serving.reliability.conftest import LOG_DIR, SEEN

#: Short ids (c1, c2) would match inside random hex; the suite's ids to scan for are long.
MIN_SCANNED = 12


def test_logs_hold_no_raw_ids_tokens_or_keys(keys):
    for handler in logging.getLogger().handlers:
        handler.flush()
    files = sorted(LOG_DIR.iterdir())
    assert files, f"no logs under {LOG_DIR}"
    text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    assert len(text) > 0
    needles = {s for s in SEEN if len(s) >= MIN_SCANNED}
    assert {keys.publishable, keys.secret, keys.admin, keys.token_secret} <= needles
    leaks = sorted({n[:10] + "..." for n in needles if n in text})
    assert leaks == [], f"secrets or customer ids found in logs: {leaks}"
    in_process = LOG_DIR / "in-process.jsonl"
    for line in in_process.read_text(encoding="utf-8").splitlines():
        json.loads(line)  # every line is one JSON object
