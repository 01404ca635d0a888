"""Prompt-injection markers: instruction-like text inside a retrieved chunk.

A chunk is data the model is told to read, yet whatever it says lands in the prompt next to the
operator's instructions. Text written to steer a model ("ignore the previous instructions", chat
template tokens, "do not tell the user", a markdown image that carries data off to a URL) has no
business in a knowledge base, so such chunks are flagged where they are retrieved and counted per
collection: an operator sees a poisoned document before it shapes many answers.

These are signals, not a filter: a few regular expressions of the known shapes, each tried only
when a word it needs occurs in the chunk, cheap enough to run on every retrieved chunk; they miss
paraphrased attacks and may flag a document that discusses prompt injection. Nothing is removed
from the prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_I = re.IGNORECASE


@dataclass(slots=True, frozen=True)
class Marker:
    name: str
    needs: tuple[str, ...]  # lowercase words of which the pattern needs one: a C substring test first
    pattern: re.Pattern[str]

    def found_in(self, text: str, lowered: str) -> bool:
        return any(word in lowered for word in self.needs) and self.pattern.search(text) is not None


MARKERS: tuple[Marker, ...] = (
    # "Ignore all previous instructions", "disregard the above rules", "forget your prior prompt"
    Marker("ignore_instructions", ("ignore", "disregard", "forget", "override"), re.compile(
        r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+|these\s+)?"
        r"(?:previous|prior|above|earlier|preceding|original|system)\s+"
        r"(?:instructions?|prompts?|directions?|rules|guidelines|context)\b", _I)),
    # "You are now DAN", "from now on you will act as", "pretend you are" (not a quoted "from now on,
    # you should pay more")
    Marker("role_override", ("now", "pretend"), re.compile(
        r"\byou\s+are\s+now\s+(?:an?\s|called\s|named\s|in\s+(?:developer|god|dan)\s+mode|dan\b|free\b|"
        r"unrestricted\b|jailbroken\b)|"
        r"\bfrom\s+now\s+on,?\s+you\s+(?:are|will\s+(?:be|act|respond|answer|only)|"
        r"must\s+(?:act|respond|answer|only))\b|"
        r"\bpretend\s+(?:that\s+)?you\s+are\b|\byou\s+must\s+now\s+act\s+as\b", _I)),
    # "reveal your system prompt", "print the hidden instructions"
    Marker("prompt_leak", ("prompt", "instructions"), re.compile(
        r"\b(?:reveal|print|show|repeat|output|disclose|leak)\s+(?:your|the)\s+"
        r"(?:system\s+prompt|(?:initial|original|hidden|secret|system)\s+(?:instructions|prompt))\b", _I)),
    # Role and turn tokens of common chat templates, which no document needs
    Marker("chat_template", ("<|", "inst]", "sys>>", "##"), re.compile(
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id)\|>|"
        r"\[/?INST\]|<</?SYS>>|^\s*#{2,}\s*(?:system|instruction)s?\s*:?\s*$", _I | re.MULTILINE)),
    # "New instructions:", or a note that tells the assistant what it must do
    Marker("injected_instructions", ("instruction", "ignore", "say", "output", "include", "insert", "tell",
            "recommend", "reveal"), re.compile(
        r"\b(?:new|updated|additional|real|actual|secret)\s+instructions?\s*:|"
        r"\b(?:ai|assistant|language\s+model|llm|chatbot)s?\b[^.\n]{0,40}?\b(?:must|should|has\s+to|"
        r"needs\s+to)\s+(?:now\s+|always\s+)?(?:ignore|say|output|include|insert|tell|recommend|reveal)\b",
        _I)),
    # Hide things from the reader: "do not tell the user", "without informing the user"
    Marker("conceal_from_user", ("user",), re.compile(
        r"\b(?:do\s+not|don't|never)\s+(?:tell|inform|mention\s+(?:this|these\s+instructions)\s+to|"
        r"reveal\s+(?:this|these\s+instructions)\s+to)\s+the\s+user\b|"
        r"\bwithout\s+(?:telling|informing|alerting)\s+the\s+user\b", _I)),
    # Data carried off in an auto-loaded markdown image URL, or a request to send the chat away
    Marker("exfiltration", ("](", "send", "post", "forward", "email", "upload"), re.compile(
        r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?&][^)\s]*=|"
        r"\b(?:send|post|forward|email|upload)\s+(?:the|this|your|all)\s+(?:whole\s+|entire\s+)?"
        r"(?:conversation|chat|data|history|credentials|api\s+keys?|passwords?)\b", _I)),
)

MARKER_NAMES = tuple(marker.name for marker in MARKERS)


def injection_markers(text: str) -> list[str]:
    """The names of the markers found in `text`, in the order of MARKERS; empty for clean text."""
    lowered = text.lower()
    return [marker.name for marker in MARKERS if marker.found_in(text, lowered)]
