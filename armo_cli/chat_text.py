"""Chat text from a policy, back into messages: what a trainer sends a remote reward model.

OpenRLHF sends `query` = prompt + response rendered with the *policy's* chat template (and `prompts`, the
prompt part). armo scores messages with its backbone's own template, so the text is parsed back into
messages first. Understood forms:
  - ChatML (Qwen, SmolLM, ...)   <|im_start|>user\\n...<|im_end|>
  - Llama 3                      <|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|>
  - Gemma                        <start_of_turn>user\\n...<end_of_turn>
  - Mistral                      [INST] ... [/INST] ...</s>
  - text with no template markers: one user turn (a prompt only).
"""
from __future__ import annotations

import re

from .errors import ArmoError

FORMS = "ChatML (<|im_start|>), Llama 3 (<|start_header_id|>), Gemma (<start_of_turn>), Mistral ([INST]), or plain text for a prompt"
# end-of-turn / end-of-sequence / padding tokens a policy leaves at the end of a response
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<eos>", "</s>", "<|end|>")
_BEGIN = ("<|begin_of_text|>", "<bos>", "<s>")

_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.S)
_LLAMA3 = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|(?=<\|start_header_id\|>)|\Z)", re.S)
_GEMMA = re.compile(r"<start_of_turn>(\w+)\n(.*?)(?:<end_of_turn>|(?=<start_of_turn>)|\Z)", re.S)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "model": "assistant"}


def strip_end(text: str) -> str:
    """A response without trailing end/pad tokens and surrounding whitespace."""
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for tok in END_TOKENS:
            if text.endswith(tok):
                text = text[: -len(tok)].rstrip()
                changed = True
    return text


def _strip_begin(text: str) -> str:
    text = text.lstrip()
    for tok in _BEGIN:
        if text.startswith(tok):
            return text[len(tok):].lstrip()
    return text


def _by_pattern(text: str, pattern: re.Pattern, marker: str) -> list[dict]:
    head = text[: text.find(marker)]
    if _strip_begin(head).strip():
        raise ArmoError(f"text before the first {marker} marker: not a {marker} conversation")
    msgs = []
    end = len(head)
    for m in pattern.finditer(text):
        if strip_end(text[end:m.start()]):
            # text after a turn's end and outside any turn would be dropped unscored
            raise ArmoError(f"text outside any turn after {_excerpt(text[:end])}")
        end = m.end()
        role = _ROLES.get(m.group(1))
        if role is None:
            raise ArmoError(f"unknown role {m.group(1)!r}")
        msgs.append({"role": role, "content": strip_end(m.group(2))})
    if strip_end(text[end:]):
        raise ArmoError(f"text outside any turn after {_excerpt(text[:end])}")
    return msgs


def _excerpt(text: str) -> str:
    return repr(text[-40:]) if len(text) > 40 else repr(text)


def _mistral(text: str) -> list[dict]:
    text = _strip_begin(text)
    if not text.startswith("[INST]"):
        raise ArmoError("text before the first [INST] marker: not a Mistral conversation")
    msgs = []
    for turn in text.split("[INST]")[1:]:
        user, sep, answer = turn.partition("[/INST]")
        if "[/INST]" in answer:
            raise ArmoError("[/INST] without its [INST]")
        msgs.append({"role": "user", "content": strip_end(user)})
        if sep:
            msgs.append({"role": "assistant", "content": strip_end(answer)})
    return msgs


def parse_chat(text: str) -> list[dict]:
    """Messages of a rendered conversation (the last may be an open assistant turn, content '' when empty)."""
    if "<|im_start|>" in text:
        return _by_pattern(text, _CHATML, "<|im_start|>")
    if "<|start_header_id|>" in text:
        return _by_pattern(text, _LLAMA3, "<|start_header_id|>")
    if "<start_of_turn>" in text:
        return _by_pattern(text, _GEMMA, "<start_of_turn>")
    if "[INST]" in text:
        return _mistral(text)
    return [{"role": "user", "content": strip_end(_strip_begin(text))}]


def _prompt_messages(msgs: list[dict], where: str) -> list[dict]:
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs = msgs[:-1]  # the generation prompt's open assistant turn
    if not msgs or msgs[-1]["role"] != "user":
        raise ArmoError(f"{where}: the prompt must end with a user turn")
    return msgs


def split_query(query: str, prompt: str | None = None, where: str = "query") -> dict:
    """An armo row {"prompt": messages, "response": text} from a policy's rendered text. With `prompt` (the
    prompt part as the policy rendered it) and a query that starts with it, the response is the rest, whatever
    markers it spells (armo tokenises it as text); otherwise the query must be a templated conversation with
    exactly one assistant turn, the last, and no text outside its turns."""
    if not isinstance(query, str):
        raise ArmoError(f"{where}: expected a string")
    try:
        if prompt is not None and query.startswith(prompt):
            msgs = _prompt_messages(parse_chat(prompt), where)
            response = strip_end(query[len(prompt):])
        else:
            msgs = parse_chat(query)
            if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
                raise ArmoError(f"{where}: cannot tell the response from the prompt: send a templated conversation "
                                f"that ends with the assistant's turn, or 'prompts' that the query starts with")
            turns = sum(m["role"] == "assistant" for m in msgs)
            if turns > 1:
                # a multi-turn prompt and a response that writes turn markers of its own read the same; scoring
                # the last turn would let a policy choose the text it is scored on
                raise ArmoError(f"{where}: {turns} assistant turns: without 'prompts', a multi-turn prompt cannot be "
                                f"told from a response that writes turns of its own; send 'prompts' (each query's "
                                f"prompt part), and the rest of the query is scored as the response, as text")
            response = msgs[-1]["content"]
            msgs = _prompt_messages(msgs[:-1], where)
    except ArmoError as e:
        msg = str(e) if str(e).startswith(where) else f"{where}: {e}"
        raise ArmoError(f"{msg} (accepted: {FORMS})") from None
    return {"prompt": msgs, "response": response}
