"""Browser traffic under one publishable key: decisions/s from many visitors before 429s.

Every visitor's browser sends the site's one publishable key; the rate limits count per
customer token with a site-wide ceiling per key (docs/serving.md, "Browsers"). This bench
starts ``recsys serve`` as production runs it (keys checked, the default limits, JSON
logs) on the data of ``bench/bench_serving.py`` (built on first use under
``data/bench_serving/``), mints ``--tokens`` customer tokens for as many distinct customers
(as the site's server would) and drives ``POST /v1/decisions`` with wrk over
``--connections`` connections for ``--duration`` s after a 5 s warm-up, each request from
a random one of the visitors. It prints decisions/s answered 200, the 429s and other
errors, and the limits in force.

Run: ``make bench-browser`` (``python bench/bench_browser.py --help``). Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serving as base
from workload import BIN, ROOT, data_env, forget_event_log

PORT = 8721
URL = f"http://127.0.0.1:{PORT}"

WRK_BROWSERS = r"""
math.randomseed(%(seed)d)
wrk.method = "POST"
local key = "%(key)s"
local visitors = {%(visitors)s}
local threads = {}
setup = function(thread) table.insert(threads, thread) end
limited = 0
response = function(status, headers, body)
  if status == 429 then limited = limited + 1 end
end
request = function()
  local v = visitors[math.random(1, #visitors)]
  local body = string.format('{"customer_id": "%%s", "touchpoint": "web_home"}', v[1])
  -- wrk.format's headers replace wrk.headers: all of them here
  local headers = {["Content-Type"] = "application/json", ["X-API-Key"] = key,
                   ["X-Customer-Token"] = v[2]}
  return wrk.format(nil, "/v1/decisions", headers, body)
end
"""

# The 429s of every wrk thread, to a file next to the script (wrk's summary has only non-2xx).
WRK_COUNT_429 = r"""
local summary_done = done
done = function(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("limited") end
  local f = io.open("%(path)s", "w")
  f:write(tostring(total))
  f:close()
  summary_done(summary, latency, requests)
end
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1_000, help="distinct customers (tokens)")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the service")
    parser.add_argument("--customers", type=int, default=5_000, help="bench data (first use)")
    parser.add_argument("--offers", type=int, default=200, help="bench data (first use)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench_serving")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if not 1 <= args.tokens <= args.customers:
        sys.exit(
            f"--tokens must be between 1 and --customers ({args.customers}), got {args.tokens}"
        )
    from recsys.settings import ApiKeyRecord, LimitSettings, hash_key
    from serving.credentials import mint_token, new_key

    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    events = work / "events_browser.sqlite"
    key, token_secret = new_key("publishable"), secrets.token_urlsafe(48)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **data_env(work, events),
        "RECSYS_ENVIRONMENT": "production",
        "RECSYS_SERVING__PORT": str(PORT),
        "RECSYS_SERVING__WORKERS": str(args.workers),
        "RECSYS_SECURITY__API_KEYS": json.dumps(
            [ApiKeyRecord(id="shop-web", scope="publishable", hash=hash_key(key)).model_dump()]
        ),
        "RECSYS_SECURITY__TOKEN_SECRET": token_secret,
        "RECSYS_OBSERVABILITY__LOG_FORMAT": "json",
        "RECSYS_LIFECYCLE__MODEL_CACHE_DIR": str(work / "model_cache" / "browser"),
    }
    if not (work / "mlflow.db").exists():
        base.prepare(work, args.customers, args.offers, 30, args.seed, {"env": env})
    visitors = [f"C{i:07d}" for i in range(1, args.tokens + 1)]
    tokens = {v: mint_token(token_secret, v, 3_600) for v in visitors}
    counted = work / "browser_429.txt"
    script = work / "browsers.lua"
    script.write_text(
        WRK_BROWSERS
        % {
            "seed": args.seed,
            "key": key,
            "visitors": ", ".join(f'{{"{v}", "{tokens[v]}"}}' for v in visitors),
        }
        + base.WRK_DONE
        + WRK_COUNT_429 % {"path": counted}
    )
    forget_event_log(events)
    server = base.start([str(BIN / "recsys"), "serve"], {"env": env}, work / "serve_browser.log")
    try:
        base.wait_ready(f"{URL}/readyz", server, timeout=600)  # a first model compile
        base.wrk(script, URL, 5, args.connections, args.threads)  # warm up
        counted.unlink(missing_ok=True)
        result = base.wrk(script, URL, args.duration, args.connections, args.threads)
    finally:
        base.stop(server)
        script.unlink(missing_ok=True)  # it holds the key and the tokens
    limited = int(counted.read_text())
    ok = result["requests"] - result["non_2xx"]
    seconds = result["seconds"]
    limits = LimitSettings()
    print(
        f"\nbrowser decisions under one publishable key, {args.tokens:,} customer tokens, "
        f"{args.connections} connections, {args.workers} workers, {seconds:.0f} s\n"
        f"  answered 200          {ok / seconds:10,.0f} decisions/s  ({ok:,})\n"
        f"  429 (rate limited)    {limited:10,}\n"
        f"  other errors          {result['errors'] - limited:10,}\n"
        f"  latency p50/p95/p99   {result['p50_ms']:.1f} / {result['p95_ms']:.1f} / "
        f"{result['p99_ms']:.1f} ms\n"
        f"  limits per worker: {limits.rate_publishable_per_second:g}/s (burst "
        f"{limits.rate_publishable_burst}) per customer token, site ceiling "
        f"{limits.rate_publishable_site_per_second:g}/s (burst "
        f"{limits.rate_publishable_site_burst}) per key"
    )


if __name__ == "__main__":
    main()
