"""Run the dashboard headless against a server for a while and save what it shows as an SVG.

`python -m tui.capture --url URL --api-key KEY --seconds 30 --size 120x36 docs/dashboard.svg`
made the README's picture (see README, "Dashboard"). The SVG is Textual's own screenshot.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tui.app import DEFAULT_URL, DashboardApp


async def capture(url: str, api_key: str, seconds: float, size: tuple[int, int],
                  interval_s: float = 1.0) -> str:
    """The SVG of the dashboard after `seconds` of polling; raises RuntimeError if it never connected."""
    app = DashboardApp(url, api_key, poll_interval_s=interval_s)
    async with app.run_test(size=size) as pilot:
        await pilot.pause(seconds)
        if app.last_poll is None:
            raise RuntimeError(app.last_error or "the dashboard never got an answer")
        return app.export_screenshot()


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 120x36, not {text!r}") from None
    if width < 40 or height < 12:
        raise argparse.ArgumentTypeError("size must be at least 40x12")
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tui.capture", description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to poll before the picture")
    parser.add_argument("--size", type=_size, default=(120, 36), help="terminal size, e.g. 120x36")
    args = parser.parse_args(argv)
    try:
        svg = asyncio.run(capture(args.url, args.api_key, args.seconds, args.size))
    except RuntimeError as exc:
        print(f"capture: error: {exc}", file=sys.stderr)
        return 1
    args.output.write_text(svg, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
