"""A stdio MCP server that outlives its client: when its stdin closes it
keeps running, as a server busy with work of its own does (the reference
servers exit on end of input, unless a long call or a timer holds them),
so only a signal stops it. Its one tool, `ping`, answers `pong`. Used by
kira-cli's tests/it/tools.rs to check that a killed kira takes its stdio
servers with it."""

import json
import sys
import time


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if "id" not in message:
        continue
    method = message.get("method")
    if method == "initialize":
        result = {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "lingering", "version": "1.0.0"},
        }
    elif method == "tools/list":
        result = {
            "tools": [
                {
                    "name": "ping",
                    "description": "answers pong",
                    "inputSchema": {"type": "object", "properties": {}},
                }
            ]
        }
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "pong"}]}
    else:
        send(
            {
                "jsonrpc": "2.0",
                "id": message["id"],
                "error": {"code": -32601, "message": f"no method {method}"},
            }
        )
        continue
    send({"jsonrpc": "2.0", "id": message["id"], "result": result})

# End of input: the client is gone. Stay, as a busy server would.
while True:
    time.sleep(3600)
