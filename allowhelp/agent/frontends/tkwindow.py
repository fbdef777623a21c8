"""A small Tk window, run as its own process when neither zenity nor kdialog exists.

``python -m allowhelp.agent.frontends.tkwindow`` reads one JSON object on stdin:
``{"title", "text", "buttons": [[key, label], ...], "on_close", "timeout", "topmost"}``,
shows ``text`` as plain text (a Tk label never interprets markup), and prints
the key of the button clicked (``on_close`` when the window is closed or Escape
is pressed, nothing when it times out). The agent's event loop never runs Tk.
"""

from __future__ import annotations

import functools
import json
import sys
import tkinter as tk
from typing import Any

from allowhelp.protocol.text import plain_text

WRAP = 440


def _spec() -> dict[str, Any]:
    spec = json.loads(sys.stdin.read(65536))
    if not isinstance(spec, dict):
        raise SystemExit("tkwindow: the spec must be a JSON object")
    return spec


def ask_line(spec: dict[str, Any]) -> str:
    """``"entry": true``: one line of text and Send; prints the text (nothing: cancelled)."""
    typed = [""]
    root = tk.Tk()
    root.title(plain_text(spec.get("title", ""), 200))
    if spec.get("topmost"):
        root.attributes("-topmost", True)
    text = "\n".join(plain_text(line, 1000) for line in str(spec.get("text", "")).split("\n"))
    tk.Label(root, text=text, justify="left", anchor="w", wraplength=WRAP).pack(
        padx=16, pady=(16, 8), fill="x"
    )
    field = tk.Entry(root, width=50)
    field.pack(padx=16, pady=4, fill="x")
    field.focus_set()

    def send(_event: object = None) -> None:
        typed[0] = field.get()
        root.destroy()

    tk.Button(root, text="Send", command=send).pack(padx=12, pady=(4, 12), anchor="e")
    root.bind("<Return>", send)
    root.bind("<Escape>", lambda _event: root.destroy())
    _centre(root)
    root.mainloop()
    return typed[0]


def show(spec: dict[str, Any]) -> str:
    if spec.get("entry"):
        return ask_line(spec)
    chosen = [""]
    root = tk.Tk()
    root.title(plain_text(spec.get("title", ""), 200))
    root.resizable(width=False, height=False)
    if spec.get("topmost"):
        root.attributes("-topmost", True)

    def choose(key: str) -> None:
        chosen[0] = key
        root.destroy()

    text = "\n".join(plain_text(line, 1000) for line in str(spec.get("text", "")).split("\n"))
    label = tk.Label(root, text=text, justify="left", anchor="w", wraplength=WRAP)
    label.pack(padx=16, pady=(16, 8), fill="x")
    row = tk.Frame(root)
    row.pack(padx=12, pady=(4, 12), anchor="e")
    for key, caption in spec.get("buttons", []):
        button = tk.Button(row, text=str(caption), command=functools.partial(choose, str(key)))
        button.pack(side="left", padx=4)
    on_close = str(spec.get("on_close", ""))
    root.protocol("WM_DELETE_WINDOW", lambda: choose(on_close))
    root.bind("<Escape>", lambda _event: choose(on_close))
    _centre(root)
    timeout = spec.get("timeout")
    if isinstance(timeout, int | float) and timeout > 0:
        root.after(int(timeout * 1000), root.destroy)
    root.mainloop()
    return chosen[0]


def _centre(root: tk.Tk) -> None:
    root.update_idletasks()
    width, height = root.winfo_reqwidth(), root.winfo_reqheight()
    x = max(0, (root.winfo_screenwidth() - width) // 2)
    y = max(0, (root.winfo_screenheight() - height) // 3)
    root.geometry(f"+{x}+{y}")


def main() -> int:
    print(show(_spec()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
