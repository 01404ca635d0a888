"""The `appliance` command line."""

from __future__ import annotations


def main() -> None:
    print("appliance: under construction")
