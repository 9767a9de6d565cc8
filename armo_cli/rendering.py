"""Chat rendering and tokenisation: a conversation becomes a `Tree` of token ids, a prompt shared by one
or two continuations, with the prompt's tokens an exact prefix of the whole conversation's and exactly one
BOS. Also where f(x) is read (gate rules) and what happens to rows over the length limit."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .errors import ArmoError
from .jsonl import sha256_json
from .rows import Example, Skipped, read_groups



# --- gate rules ---------------------------------------------------------------------------------
# A gate rule says where the prompt feature f(x) is read. Positions are given relative to the
# prompt as rendered *with* the generation prompt (length P, generation-prompt suffix of length S).
GATE_RULES: dict[str, Callable[[int, int], int]] = {
    # the last token before the first response token (armo's default)
    "generation-prompt": lambda p, s: p - 1,
    # ArmoRM's: the end-of-turn token just before the last assistant header (P-5 for Llama 3)
    "armo-eot": lambda p, s: p - s - 1,
}

# The same rules as (offset into the last occurrence of the generation-prompt token pattern),
# which is how an exported model finds the position in a plain token sequence.
GATE_RULE_PATTERN_OFFSET: dict[str, Callable[[int], int]] = {
    "generation-prompt": lambda s: s - 1,
    "armo-eot": lambda s: -1,
}


# --- tokenisation -------------------------------------------------------------------------------
# A message's content as the template sees it while armo traces where content lands in the rendered text:
# private-use characters that no template transforms, numbered by the content's place in the row.
_SENTINEL = re.compile("\ue000(\\d+)\ue001")


def _sentinel(k: int) -> str:
    return f"\ue000{k}\ue001"


def control_tokens(tokenizer: Any) -> dict[str, int]:
    """The tokenizer's special added tokens (end of turn, role headers, BOS/EOS...), by text: ids that only a
    chat template may emit. Text from a row or a policy that spells one is data and is tokenised as text."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    out = {t.content: int(i) for i, t in decoder.items() if getattr(t, "special", False) and t.content}
    for text in getattr(tokenizer, "all_special_tokens", None) or []:
        i = tokenizer.convert_tokens_to_ids(text) if hasattr(tokenizer, "convert_tokens_to_ids") else None
        if text and isinstance(i, int):
            out.setdefault(text, i)
    return out


class TooLong(ArmoError):
    """A row over the length limit under --overflow error; `what` without the advice, which depends on the command."""

    def __init__(self, what: str, advice: str):
        super().__init__(f"{what} ({advice})")
        self.what = what


class ForgedMarkerUntraceable(ArmoError):
    """A row holds a control token's text and the template changes message text in a way armo cannot trace."""


class TemplateRefused(ArmoError):
    """The chat template raised on a conversation (its raise_exception, or an undefined name)."""

    def __init__(self, reason: str):
        super().__init__(f"field 'prompt': the backbone's chat template refuses this conversation: {reason}")
        self.reason = reason


@dataclass
class Tree:
    """Token ids of one example: a prompt and one or two continuations sharing it (or, for rows run together
    by forward.share_prompts, every distinct continuation of the rows that share the prompt)."""

    index: int
    example: Example
    prompt: list[int]
    conts: list[list[int]]
    gate: int
    truncated: bool = False

    @property
    def length(self) -> int:
        """Tokens in the forward pass: the prompt and each distinct continuation once."""
        return len(self.prompt) + sum(len(c) for c in self.branches()[0])

    def branches(self) -> tuple[list[list[int]], list[int]]:
        """The distinct continuations, and each continuation's branch. A pair whose two responses have the
        same tokens runs them once, so they get the same feature and score: an exact tie, not a margin of
        float noise from two positions in the batch."""
        if len(self.conts) == 2 and self.conts[0] == self.conts[1]:
            return [self.conts[0]], [0, 0]
        return self.conts, list(range(len(self.conts)))

    def seq_lengths(self) -> list[int]:
        return [len(self.prompt) + len(c) for c in self.conts]


class Renderer:
    """Chat-template rendering with the prompt's tokens an exact prefix of the conversation's."""

    def __init__(self, tokenizer: Any, gate_rule: str = "generation-prompt"):
        if gate_rule not in GATE_RULES:
            raise ArmoError(f"--gate-rule: unknown rule {gate_rule!r} (choose from {', '.join(GATE_RULES)})")
        self.tok = tokenizer
        self.gate_rule = gate_rule
        bos = tokenizer.bos_token_id
        with_special = tokenizer("x", add_special_tokens=True).input_ids
        without = tokenizer("x", add_special_tokens=False).input_ids
        # Does this tokenizer add BOS by itself? Then the template text must not bring a second one.
        self.adds_bos = bos is not None and len(with_special) > len(without) and with_special[0] == bos
        self.bos = bos
        probe = [{"role": "user", "content": "x"}]
        try:
            with_gen = self.render(probe, generation_prompt=True)
            without_gen = self.render(probe, generation_prompt=False)
        except TemplateRefused as e:
            raise ArmoError(f"the backbone's chat template cannot render a one-turn conversation: {e.reason}") from None
        if not with_gen.startswith(without_gen):
            raise ArmoError("the backbone's chat template renders the generation prompt in an unsupported way")
        self.gen_suffix_text = with_gen[len(without_gen):]
        # the Rust backend is used for batches only where it tokenises exactly as the wrapper does
        backend = getattr(tokenizer, "backend_tokenizer", None)
        probes = [with_gen, without_gen, " x  y\n\tünïcödé ✓ <|im_start|>"]
        self._backend = backend if backend is not None and [e.ids for e in backend.encode_batch(probes, add_special_tokens=False)] \
            == [tokenizer(t, add_special_tokens=False).input_ids for t in probes] else None
        self.template_hash = sha256_json(getattr(tokenizer, "chat_template", None))[:16]
        # Only the template emits control tokens: rows whose text spells one are tokenised by _guarded_ids
        self.control_ids = control_tokens(tokenizer)
        self._control = re.compile("|".join(re.escape(t) for t in sorted(self.control_ids, key=len, reverse=True))) \
            if self.control_ids else None
        self._text_backend: Any = None  # built on first use: rows that spell a control token are rare
        self.gen_suffix = self.encode(self.gen_suffix_text, bos=False)

    def _as_text(self, text: str) -> list[int]:
        """Tokenise text with special tokens split into ordinary tokens (transformers' split_special_tokens): a copy
        of the Rust backend with encode_special_tokens set, so the shared one is never toggled."""
        if self._backend is None or not hasattr(self._backend, "to_str"):
            return self.tok(text, add_special_tokens=False, split_special_tokens=True).input_ids
        if self._text_backend is None:
            from tokenizers import Tokenizer

            self._text_backend = Tokenizer.from_str(self._backend.to_str())
            self._text_backend.encode_special_tokens = True
        return self._text_backend.encode(text, add_special_tokens=False).ids

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:
            # a template's raise_exception ("System role not supported", "roles must alternate") or an undefined
            # name: this conversation is bad input for this backbone, not a bug in armo
            if type(e).__module__.split(".")[0] == "jinja2":
                raise TemplateRefused(str(e)) from None
            raise

    def encode(self, text: str, bos: bool) -> list[int]:
        return self._with_bos(self.tok(text, add_special_tokens=False).input_ids, bos)

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        # a transformers fast tokenizer's Rust backend directly: its Python wrapper converts each encoding
        # into a dict, a third of the batch's time
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return self.tok(texts, add_special_tokens=False).input_ids

    def _with_bos(self, ids: list[int], bos: bool) -> list[int]:
        if bos and self.adds_bos and (not ids or ids[0] != self.bos):
            ids = [self.bos] + ids
        return ids

    def texts(self, ex: Example) -> tuple[str, list[str]]:
        """The prompt as rendered with the generation prompt, and each response's continuation of it."""
        p_text = self.render(ex.prompt, generation_prompt=True)
        conts = []
        for resp in ex.responses:
            full = self.render(ex.prompt + [{"role": "assistant", "content": resp}], generation_prompt=False)
            if not full.startswith(p_text):
                raise ArmoError("the chat template does not render the prompt as a prefix of the conversation")
            if len(full) == len(p_text):
                # an empty response is scored through its end-of-turn tokens; a template that renders it as
                # nothing leaves no token to read a feature at
                raise ArmoError("the backbone's chat template renders this empty response as no tokens: nothing to score")
            conts.append(full[len(p_text):])
        return p_text, conts

    def tokenize(self, ex: Example, index: int = 0) -> Tree:
        tree = self.tokenize_many([ex], [index])[0]
        if isinstance(tree, ArmoError):
            raise tree
        return tree

    def tokenize_many(self, examples: list[Example], indices: list[int]) -> list[Tree | ArmoError]:
        """tokenize() for many rows with one tokenizer call for all their texts (a fast tokenizer spreads a
        batch over the cores; one call per text left most of a GPU extract's host time in the tokenizer).
        A row whose template fails gets its error in its place, so callers report rows in file order."""
        texts: list[str] = []
        spans: list[tuple[int, int] | list[list[int]] | ArmoError] = []
        for ex in examples:
            try:
                p_text, conts = self.texts(ex)
                if self._spells_control(ex):
                    spans.append(self._guarded_ids(ex, p_text, conts))
                    continue
            except ArmoError as e:
                spans.append(e)
                continue
            spans.append((len(texts), len(conts)))
            texts += [p_text, *conts]
        ids = self._encode_batch(texts) if texts else []
        out: list[Tree | ArmoError] = []
        for ex, index, span in zip(examples, indices, spans):
            if isinstance(span, ArmoError):
                out.append(span)
                continue
            if isinstance(span, tuple):
                start, m = span
                span = [list(i) for i in ids[start:start + 1 + m]]
            prompt = self._with_bos(span[0], True)
            gate = GATE_RULES[self.gate_rule](len(prompt), len(self.gen_suffix))
            out.append(Tree(index, ex, prompt, span[1:], gate))
        return out

    # --- user text never becomes a control token ---------------------------------------------------
    def _spells_control(self, ex: Example) -> bool:
        return self._control is not None and any(
            self._control.search(text) for text in [*(m["content"] for m in ex.prompt), *ex.responses])

    def _guarded_ids(self, ex: Example, p_text: str, conts: list[str]) -> list[list[int]]:
        """Token ids of the prompt and each continuation where control tokens come only from the template's own
        text: the conversation is rendered again with each content replaced by a sentinel, which shows the
        template's text; the real rendering is split at that text's control tokens and every run between them
        (template text and content alike) is tokenised with special tokens as text. For text without control
        tokens this is exactly how the tokenizer splits a string at its added tokens."""
        contents = [m["content"] for m in ex.prompt]
        masked = [{"role": m["role"], "content": _sentinel(k)} for k, m in enumerate(ex.prompt)]
        out = [self._runs_ids(p_text, self._template_parts(self.render(masked, True), p_text, contents), 0)]
        for resp, cont in zip(ex.responses, conts):
            skeleton = self.render(masked + [{"role": "assistant", "content": _sentinel(len(contents))}], False)
            full = p_text + cont
            out.append(self._runs_ids(full, self._template_parts(skeleton, full, contents + [resp]), len(p_text)))
        return out

    @staticmethod
    def _template_parts(skeleton: str, text: str, contents: list[str]) -> list[tuple[int, int]]:
        """Where the template's own text lies in `text` (character spans), given the same conversation rendered
        with sentinels (`skeleton`). A template may trim content, so each content is matched as written or
        stripped; the match must account for every character of `text`."""
        pieces = _SENTINEL.split(skeleton)  # template text, content index, template text, ...
        parts, pos = [], 0
        for i in range(0, len(pieces), 2):
            piece = pieces[i]
            if not text.startswith(piece, pos):
                break
            parts.append((pos, pos + len(piece)))
            pos += len(piece)
            if i + 1 == len(pieces):
                if pos == len(text):
                    return parts
                break
            c, after = contents[int(pieces[i + 1])], pieces[i + 2]
            x = next((x for x in dict.fromkeys((c, c.strip(), c.lstrip(), c.rstrip()))
                      if text.startswith(x, pos) and text.startswith(after, pos + len(x))), None)
            if x is None:
                break
            pos += len(x)
        raise ForgedMarkerUntraceable(
            "a message spells a control token of the backbone's tokenizer, and its chat template changes message "
            "text in a way armo cannot trace: refused rather than let the text act as a control token")

    def _runs_ids(self, text: str, template_parts: list[tuple[int, int]], start: int) -> list[int]:
        """Token ids of text[start:]: control tokens where the template's own text spells them, and everything
        between them tokenised as text."""
        ids: list[int] = []
        run = start
        for a, b in template_parts:
            for m in self._control.finditer(text, max(a, start), b):
                ids += self._as_text(text[run:m.start()]) if m.start() > run else []
                ids.append(self.control_ids[m.group()])
                run = m.end()
        return ids + (self._as_text(text[run:]) if run < len(text) else [])

    def n_bos(self, prompt: list[int]) -> int:
        return 1 if prompt and self.bos is not None and prompt[0] == self.bos else 0

    def truncate_prompt(self, tree: Tree, max_length: int) -> Tree | None:
        """Drop the oldest prompt tokens (keeping BOS) so every sequence fits; None if impossible."""
        longest = max(len(c) for c in tree.conts)
        nb = self.n_bos(tree.prompt)
        keep = max_length - longest - nb
        tail = len(tree.prompt) - tree.gate  # tokens at and after the gate position must stay
        if keep < tail + 1:
            return None
        prompt = tree.prompt[:nb] + tree.prompt[len(tree.prompt) - keep:]
        gate = GATE_RULES[self.gate_rule](len(prompt), len(self.gen_suffix))
        return Tree(tree.index, tree.example, prompt, tree.conts, gate, truncated=True)


def _extends_positions(model_config: Any) -> bool:
    """Whether a config scales its rotary positions beyond max_position_embeddings (YaRN, linear, dynamic, ...);
    transformers 5 reports the plain case as rope_type 'default'."""
    for name in ("rope_scaling", "rope_parameters"):
        rope = getattr(model_config, name, None)
        if isinstance(rope, dict) and (rope.get("rope_type") or rope.get("type") or "default") != "default":
            return True
    return False


def length_limit(max_length: int | None, model_config: Any) -> tuple[int, str]:
    """The longest sequence allowed and how to name it: --max-length, else the backbone's positions. A
    --max-length beyond the positions the backbone was trained on is refused (features past them are silently
    unreliable), unless its config extends them (`rope_scaling`)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if max_length is not None:
        if positions and max_length > int(positions) and not _extends_positions(model_config):
            raise ArmoError(f"--max-length {max_length}: above the backbone's maximum positions {int(positions)} "
                            f"(it was not trained on longer sequences); give at most {int(positions)}")
        return max_length, "--max-length"
    if positions:
        return int(positions), "the backbone's maximum positions"
    return 1 << 62, "no limit"


def sized_tree(renderer: Renderer, ex: Example, index: int, where: str, limit: int, limit_name: str,
               overflow: str, skipped: list[Skipped], tree: Tree | ArmoError | None = None) -> Tree | None:
    """Tokenise one example (or take its `tree` from tokenize_many) and apply the length policy: the tree,
    or None (recorded in `skipped`)."""
    try:
        tree = renderer.tokenize(ex, index) if tree is None else tree
        if isinstance(tree, ArmoError):
            raise tree
    except ArmoError as e:
        raise ArmoError(f"{where}: {e}") from None
    n = max(tree.seq_lengths())
    if n <= limit:
        return tree
    if overflow == "error":
        raise TooLong(f"{where}: row {ex.id!r} has {n} tokens, over {limit_name} {limit}",
                      "use --overflow truncate-prompt or skip")
    new = renderer.truncate_prompt(tree, limit) if overflow == "truncate-prompt" else None
    if new is None:
        why = "response alone exceeds" if overflow == "truncate-prompt" else "exceeds"
        skipped.append(Skipped(ex.line, ex.id, f"{n} tokens: {why} {limit_name} {limit}"))
    return new


def tokenized(examples: Iterable[Example], renderer: Renderer, group: int = 256) -> Iterator[tuple[int, Example, Tree | ArmoError]]:
    """(index, example, tree or its rendering error), tokenised `group` rows at a time (Renderer.tokenize_many).
    An error met while reading a group (a bad line) is raised after the rows read before it have been
    yielded, so that the first bad row in the file is the one reported."""
    i = 0
    for rows, failure in read_groups(examples, group):
        for ex, tree in zip(rows, renderer.tokenize_many(rows, list(range(i, i + len(rows))))):
            yield i, ex, tree
            i += 1
        if failure is not None:
            raise failure
