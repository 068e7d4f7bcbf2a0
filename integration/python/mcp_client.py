"""A scriptable MCP client built on the official Python SDK (`mcp` on PyPI).

Reads a JSON list of operations on stdin, runs them over one MCP connection,
and prints one JSON document with the results on stdout. Used by the Rust
integration tests so that every MCP assertion goes through a client nobody
here wrote.

    python mcp_client.py --url http://127.0.0.1:PORT/mcp --token T [--mode legacy|auto]
    python mcp_client.py --stdio GATEHOUSE_BIN [--env K=V ...]

Operations: {"op": "list_tools"} | {"op": "call", "name": N, "args": {...}}
            | {"op": "sleep", "seconds": S}
"""

import argparse
import json
import sys
import time

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def dump_result(r):
    out = {"is_error": bool(r.is_error), "structured": r.structured_content, "text": ""}
    texts = [c.text for c in r.content if getattr(c, "type", "") == "text"]
    out["text"] = "\n".join(texts)
    return out


async def run(args, ops):
    statuses = []
    if args.stdio:
        env = dict(kv.split("=", 1) for kv in args.env)
        server = StdioServerParameters(command=args.stdio, args=["mcp", "stdio"], env=env)
    else:
        headers = {}
        if args.token:
            headers["Authorization"] = f"Bearer {args.token}"
        for h in args.header:
            k, v = h.split(":", 1)
            headers[k.strip()] = v.strip()
        async def on_response(response):
            statuses.append(response.status_code)

        http = httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(120.0), event_hooks={"response": [on_response]}
        )
        server = streamable_http_client(args.url, http_client=http)
    results = []
    out = {"results": results, "http_statuses": statuses}
    try:
        async with Client(server, mode=args.mode, cache=None) as client:
            init = client.session.initialize_result if args.mode == "legacy" else None
            if init is not None:
                out["protocol_version"] = init.protocol_version
                out["server_name"] = init.server_info.name
            for op in ops:
                kind = op["op"]
                try:
                    if kind == "list_tools":
                        tl = await client.list_tools()
                        results.append({"tools": [
                            {
                                "name": t.name,
                                "annotations": t.annotations.model_dump(by_alias=True, exclude_none=True) if t.annotations else None,
                                "input_schema": t.input_schema,
                                "output_schema": t.output_schema,
                            } for t in tl.tools
                        ]})
                    elif kind == "call":
                        started = time.perf_counter()
                        r = await client.call_tool(op["name"], op.get("args", {}))
                        d = dump_result(r)
                        d["elapsed_ms"] = (time.perf_counter() - started) * 1000
                        results.append(d)
                    elif kind == "sleep":
                        await anyio.sleep(op["seconds"])
                        results.append({"slept": op["seconds"]})
                    else:
                        results.append({"bad_op": kind})
                except MCPError as e:
                    results.append({"rpc_error": {"code": e.error.code, "message": e.error.message}})
                except Exception as e:  # noqa: BLE001 - report everything to the test
                    results.append({"exception": f"{type(e).__name__}: {e}"})
    except BaseException as e:  # noqa: BLE001
        msg = repr(e)
        if hasattr(e, "exceptions"):
            msg += " " + " ".join(repr(x) for x in e.exceptions)
        out["connect_error"] = msg
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url")
    p.add_argument("--token")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--mode", default="legacy")
    p.add_argument("--stdio")
    p.add_argument("--env", action="append", default=[])
    args = p.parse_args()
    ops = json.load(sys.stdin)
    out = anyio.run(run, args, ops)
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main()
