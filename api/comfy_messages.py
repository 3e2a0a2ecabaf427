"""ComfyUI's answers turned into one line: a rejected prompt's errors, a failed run's exception."""
from __future__ import annotations

import json


def describe_validation_failure(body: dict) -> str:
    """One line from ComfyUI's answer to a rejected POST /prompt: its error and every node error."""
    error = body.get("error")
    parts = []
    if isinstance(error, dict):
        parts.append(error.get("message", "") + (f": {error['details']}" if error.get("details") else ""))
    elif error:
        parts.append(str(error))
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for item in node_error.get("errors", []):
            detail = f" ({item['details']})" if item.get("details") else ""
            parts.append(f"node {node_id} ({node_error.get('class_type', '?')}): {item.get('message', '')}{detail}")
    return "; ".join(part for part in parts if part) or json.dumps(body)


def describe_execution_failure(entry: dict) -> str:
    """One line from a failed prompt's history entry: the node, the exception type and its message."""
    for event, data in (entry.get("status") or {}).get("messages", []):
        if event == "execution_error":
            # ComfyUI gives the full dotted name; a custom node's module part is a file-system path.
            exception_type = str(data.get("exception_type") or "error").rsplit(".", 1)[-1]
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{exception_type}: {str(data.get('exception_message', '')).strip()}"
            )
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "the server reported an error without details (see its log)"
