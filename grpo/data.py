"""Tasks: where prompts and gold answers come from.

A task turns rows (``question``, ``answer``, task columns) into prompts for the policy. The trainer asks a
task for a train stream (``PromptStream``: endless, seeded, resumable) and a fixed held-out eval list.

The synthetic ``arithmetic`` task is the embedded default: sums of 2-8 single-digit numbers written in a
26-token vocabulary, so the bundled tiny base model (``models/tiny-base``) can learn it on a laptop CPU.
Its prompt is the R1-Zero template in miniature: the completion is expected to think inside
``<think></think>`` and answer inside ``<answer></answer>``. ``scripts/make_tiny_base.py`` pretrains the
tiny model on completions written by :func:`solution_direct`, :func:`solution_steps` and
:func:`solution_malformed`, so this file is the single source of the task's text format.

Real datasets (loaded with ``datasets`` by hub name or from local JSONL/JSON/Parquet/CSV files):

* ``gsm8k``: ``openai/gsm8k``; the gold is the number after ``####``.
* ``math``: MATH train levels 3-5, evaluated on MATH-500; the gold is the ``answer`` column or the last
  ``\\boxed{}`` of the solution.
* ``countdown``: ``Jiayi-Pan/Countdown-Tasks-3to4`` (TinyZero); rows keep ``target`` and ``nums``.
* ``dataset``: any dataset, with ``question_field`` / ``answer_field`` naming its columns.

Gold answers are normalised into ``answer`` and parsed once at load time (``rewards.accuracy.parse_golds``);
a bad row is an error naming its index, or with ``on_bad_row: skip`` is dropped and counted. Prompts use a
template (:func:`render_prompt`): DeepSeek-R1's Table 1 text (``r1``), Qwen-Math's boxed prompt
(``qwen_math``), the model's chat template (``chat``), optionally ending in a prefilled ``<think>``. A finite
dataset streams through :class:`DatasetStream`: shuffled with the seed, a new shuffle every epoch, resumable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo.config import ConfigError

log = logging.getLogger(__name__)
TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable:
    """Register a task factory under ``name`` (used by the ``task:`` config key)."""

    def wrap(fn: Callable[..., Task]) -> Callable[..., Task]:
        TASKS[name] = fn
        return fn

    return wrap


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as ``name``; an unknown name lists the known ones.

    Config validation builds the task (so a bad dataset fails before the model loads) and the trainer builds
    it again: the last few tasks are cached, keyed by name, kwargs and the modification times of local files.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    mtimes = [Path(str(kwargs[k])).expanduser().stat().st_mtime_ns for k in ("path", "eval_path")
              if isinstance(kwargs.get(k), str) and Path(str(kwargs[k])).expanduser().is_file()]
    key = (name, repr(sorted(kwargs.items())), tuple(mtimes))
    if key not in _TASK_CACHE:
        _TASK_CACHE[key] = TASKS[name](**kwargs)
        while len(_TASK_CACHE) > 4:
            _TASK_CACHE.pop(next(iter(_TASK_CACHE)))
    return _TASK_CACHE[key]


_TASK_CACHE: dict[tuple, Task] = {}


class PromptStream:
    """An endless, seeded stream of train rows; ``state_dict`` records the position for exact resume."""

    def __init__(self, make_row: Callable[[random.Random], dict], seed: int, exclude: set[str] | None = None):
        self.make_row = make_row
        self.rng = random.Random(seed)
        self.exclude = exclude or set()
        self.rows_served = 0

    def take(self, n: int) -> list[dict]:
        """Return the next ``n`` rows (never one whose ``question`` is in ``exclude``)."""
        rows = []
        while len(rows) < n:
            row = self.make_row(self.rng)
            if row["question"] not in self.exclude:
                rows.append(row)
        self.rows_served += n
        return rows

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "rows_served": self.rows_served}

    def load_state_dict(self, state: dict) -> None:
        rng_state = state["rng"]
        # JSON/YAML round-trips turn the inner tuple into a list; random wants tuples.
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.rows_served = state["rows_served"]


class DatasetStream:
    """An endless stream over a finite list of rows: shuffled with the seed, a fresh shuffle every epoch.

    ``state_dict`` is plain ints (epoch, position), so a checkpoint stores it as JSON and a resumed run
    continues with exactly the rows an uninterrupted run would have taken.
    """

    def __init__(self, rows: list[dict], seed: int, render: Callable[[dict], dict] | None = None):
        if not rows:
            raise DataError("the train split has no rows; check task_kwargs (path, split, filters)")
        self.rows = rows
        self.seed = seed
        self.render = render or (lambda row: dict(row))
        self.epoch = self.pos = self.rows_served = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[dict]:
        """Return the next ``n`` rows (each a fresh dict with its ``prompt``), starting a new epoch when one ends."""
        out = []
        for _ in range(n):
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self.render(self.rows[self._order[self.pos]]))
            self.pos += 1
        self.rows_served += n
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "rows_served": self.rows_served}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self.rows_served = state["rows_served"]
        self._order = self._permutation(self.epoch)


class Task:
    """A task: a train stream factory, a held-out eval list, and the columns rewards receive.

    ``eval_rows`` may be given as a list or as a zero-argument callable (loaded on first use). Tasks whose
    prompts use the model's chat template need :meth:`bind_tokenizer` before rows are taken.
    """

    def __init__(self, name: str, train_stream: Callable[[int], PromptStream | DatasetStream],
                 eval_rows: list[dict] | Callable[[], list[dict]] | None = None,
                 render: Callable[[dict], dict] | None = None):
        self.name = name
        self._train_stream = train_stream
        self._eval_rows = [] if eval_rows is None else eval_rows
        self._render = render
        self.tokenizer: Any = None
        self.stats: dict[str, int] = {}
        self.template: str | None = None  # the prompt template of a dataset task (None: the task's own prompt)
        self.prefill_think = False

    def train_stream(self, seed: int) -> PromptStream | DatasetStream:
        """An endless, resumable stream of train rows for one process (``seed`` differs per rank)."""
        return self._train_stream(seed)

    @property
    def eval_rows(self) -> list[dict]:
        """The held-out rows, each with its ``prompt`` (fixed: the same for every run and every seed)."""
        if callable(self._eval_rows):
            self._eval_rows = self._eval_rows()
        if self._render is None:
            return self._eval_rows
        key = id(self.tokenizer)  # chat prompts depend on the tokenizer: re-render if it changes
        if getattr(self, "_eval_key", None) != key:
            self._eval_cache, self._eval_key = [self._render(r) for r in self._eval_rows], key
        return self._eval_cache

    def bind_tokenizer(self, tokenizer: Any) -> None:
        """Give the task the model's tokenizer (the ``chat`` template renders prompts with it)."""
        self.tokenizer = tokenizer


# --- the synthetic arithmetic task -------------------------------------------------------------------

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"


def arithmetic_prompt(nums: list[int]) -> str:
    """The prompt for a sum, e.g. ``"Q: 6+2+2+7=?\\nA:"``; the completion starts right after ``A:``."""
    return "Q: " + "+".join(str(n) for n in nums) + "=?\nA:"


def solution_direct(nums: list[int]) -> str:
    """An answer with an empty think block: ``<think></think><answer>17</answer>``."""
    return f"{THINK_OPEN}{THINK_CLOSE}{ANSWER_OPEN}{sum(nums)}{ANSWER_CLOSE}"


def solution_steps(nums: list[int]) -> str:
    """A chain of partial sums: ``<think>6+2=8\\n8+2=10\\n10+7=17</think><answer>17</answer>``."""
    total, lines = nums[0], []
    for n in nums[1:]:
        lines.append(f"{total}+{n}={total + n}")
        total += n
    return f"{THINK_OPEN}" + "\n".join(lines) + f"{THINK_CLOSE}{ANSWER_OPEN}{total}{ANSWER_CLOSE}"


def solution_malformed(nums: list[int], rng: random.Random) -> str:
    """A completion that breaks the R1 format in one of a few ways, so the format reward has signal."""
    good = solution_direct(nums) if rng.random() < 0.5 else solution_steps(nums)
    kind = rng.randrange(4)
    if kind == 0:  # no tags at all
        return f" {sum(nums)}"
    if kind == 1:  # answer without its think block
        return f"{ANSWER_OPEN}{sum(nums)}{ANSWER_CLOSE}"
    if kind == 2:  # text after the answer
        return good + f" {sum(nums)}"
    return good.replace(ANSWER_CLOSE, "")  # unclosed answer


def make_arithmetic_row(rng: random.Random, min_terms: int = 2, max_terms: int = 8, max_digit: int = 9) -> dict:
    """One problem row: ``question`` ("6+2+2+7"), ``prompt``, gold ``answer`` ("17") and ``nums``."""
    k = rng.randint(min_terms, max_terms)
    nums = [rng.randint(1, max_digit) for _ in range(k)]
    return {
        "question": "+".join(map(str, nums)),
        "prompt": arithmetic_prompt(nums),
        "answer": str(sum(nums)),
        "nums": nums,
    }


# The eval set is drawn from its own seed so it never depends on the run's seed: every run of the
# default task is scored on the same problems, and the train stream skips them (held out).
EVAL_SEED = 1234


@register_task("arithmetic")
def arithmetic_task(min_terms: int = 2, max_terms: int = 8, max_digit: int = 9, num_eval: int = 256) -> Task:
    """Sums of ``min_terms``..``max_terms`` numbers in 1..``max_digit``; ``num_eval`` held-out problems."""
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"arithmetic task needs 2 <= min_terms <= max_terms, got {min_terms}, {max_terms}")
    if not 1 <= max_digit <= 9:
        raise ValueError(f"arithmetic task needs single digits: max_digit in 1..9, got {max_digit}")

    def make_row(rng: random.Random) -> dict:
        return make_arithmetic_row(rng, min_terms, max_terms, max_digit)

    eval_rng = random.Random(EVAL_SEED)
    eval_rows: list[dict] = []
    seen: set[str] = set()
    # Distinct problems only; the k=2 space is small, so cap attempts rather than loop forever.
    for _ in range(num_eval * 20):
        if len(eval_rows) == num_eval:
            break
        row = make_row(eval_rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            eval_rows.append(row)
    return Task("arithmetic", lambda seed: PromptStream(make_row, seed, exclude=seen), eval_rows)


# --- prompt templates ----------------------------------------------------------------------------------

# DeepSeek-R1 paper, Table 1, verbatim ({prompt} is the question). The completion starts after "Assistant:".
R1_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> "
    "reasoning process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)
# Qwen2.5-Math's own prompt, as SimpleRL-Zoo and Dr. GRPO (Oat-Zero) use it on base models: the answer is the
# last \boxed{} of the completion; there are no <think>/<answer> tags.
QWEN_MATH_TEMPLATE = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
    "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATES = ("r1", "qwen_math", "chat", "plain")
# Named system prompts for ``template: chat`` (instruct models): an instruct model given only the question
# writes neither tags nor a box, so every rule reward is 0. ``r1``: the R1 instruction (answer in
# <think>/<answer> tags; rewards default to answer_format r1, format template r1). ``qwen_math``: the boxed
# instruction (rewards default to answer_format boxed, format template boxed). Any other string is used as is.
SYSTEM_PROMPTS = {
    "r1": R1_TEMPLATE.split(" User: {prompt}")[0],
    "qwen_math": "Please reason step by step, and put your final answer within \\boxed{}.",
}


class DataError(ConfigError):
    """A dataset that cannot be loaded or used; the message is one line naming the problem and the fix."""


def render_prompt(question: str, template: str = "r1", tokenizer: Any = None, system_prompt: str | None = None,
                  prefill_think: bool = False) -> str:
    """The prompt text for ``question``.

    Args:
        question: the problem statement.
        template: ``r1`` (DeepSeek-R1 Table 1), ``qwen_math`` (boxed answer), ``chat`` (the tokenizer's chat
            template, for instruct models), ``plain`` (the question alone), or a custom string holding
            ``{question}``.
        tokenizer: needed for ``chat`` only.
        system_prompt: optional system message for ``chat``: a name from ``SYSTEM_PROMPTS`` (``r1``,
            ``qwen_math``) or the text itself.
        prefill_think: end the prompt with ``<think>`` so the completion starts inside the think block
            (TinyZero, Open-Reasoner-Zero). Configure the format reward to match.

    Example:
        >>> render_prompt("1+1", "r1", prefill_think=True)[-28:]
        'User: 1+1. Assistant: <think>'
    """
    question = question.strip()
    if template == "r1":
        text = R1_TEMPLATE.format(prompt=question)
    elif template == "qwen_math":
        text = QWEN_MATH_TEMPLATE.format(prompt=question)
    elif template == "plain":
        text = question
    elif template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError("template 'chat' needs a tokenizer with a chat_template; use an instruct model or "
                            "template r1 / qwen_math for base models")
        system_prompt = SYSTEM_PROMPTS.get(system_prompt, system_prompt) if system_prompt else None
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif "{question}" in template:
        text = template.replace("{question}", question)
    else:
        raise DataError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)} or a string with "
                        "{question}")
    if prefill_think:
        text += " <think>" if text.endswith(":") else "<think>"
    return text


def reward_defaults(task: Task) -> dict[str, dict]:
    """Reward kwargs that match the task's template: where the answer is, and what the format is.

    ``qwen_math`` prompts ask for ``\\boxed{}``: ``answer_format: boxed`` and format ``template: boxed``. A
    prefilled ``<think>`` means the completion starts inside the think block: format ``prefilled_think: true``.
    ``chat`` with a named system prompt (``r1``, ``qwen_math``) expects what that instruction asks for.
    """
    style = task.template
    if style == "chat":
        style = getattr(task, "system_prompt", None)
    if style == "qwen_math":
        answer, fmt = {"answer_format": "boxed"}, {"template": "boxed"}
    elif style == "r1":
        answer, fmt = {"answer_format": "r1"}, {"template": "r1", "prefilled_think": task.prefill_think}
    else:
        return {}
    return {"accuracy": answer, "countdown": answer, "format": fmt,
            "tag_count": {"prefilled_think": task.prefill_think}}


def check_rewards_match(task: Task, rewards_config: dict) -> None:
    """A reward configured against the task's template (e.g. the R1 format on a boxed prompt) is a config error.

    Raises:
        DataError: naming the reward, the mismatched kwarg and the value to set.
    """
    defaults = reward_defaults(task)
    for name, spec in rewards_config.items():
        kwargs = (spec.get("kwargs") or {}) if isinstance(spec, dict) else {}
        for key, want in defaults.get(name, {}).items():
            have = kwargs.get(key, {"answer_format": "r1", "template": "r1", "prefilled_think": False}[key])
            if have != want and have != "auto":
                hint = f"prefill_think: {str(task.prefill_think).lower()}" if key == "prefilled_think" else \
                    f"template {task.template}"
                raise DataError(f"reward '{name}' has {key}: {have} but the task's prompt uses {hint}; set "
                                f"rewards.{name}.kwargs.{key}: {str(want).lower() if isinstance(want, bool) else want}")


# --- gold answers --------------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, braces matched; ``None`` if none.

    Example:
        >>> last_boxed(r"so $x = \boxed{\frac{1}{2}}$.")
        '\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def gsm8k_gold(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, without thousands separators ("1,000" -> "1000")."""
    if "####" not in solution:
        raise ValueError("no '####' before the final answer")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise ValueError("empty answer after '####'")
    return gold


def check_gold(answer: str) -> str:
    """A gold answer's cheap per-row check (non-empty); the accuracy reward parses all golds in one batch later."""
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("empty gold answer")
    return answer.strip()


def _gold_parser() -> Callable[[list[str]], Any] | None:
    """``rewards.accuracy.parse_golds`` (batch; raises ValueError "row i: ..."), else None (no parser yet)."""
    from rewards import accuracy  # rewards import nothing from grpo, so this cannot cycle

    return getattr(accuracy, "parse_golds", None)


def validate_golds(rows: list[dict], indices: list[int], source: str, on_bad_row: str) -> tuple[list[dict], list[str]]:
    """Parse every row's ``answer`` as the accuracy reward will, once, at load time.

    Args:
        rows: normalised rows; ``indices[k]`` is row k's index in the raw dataset (for messages).

    Returns:
        (rows whose gold parses, reasons for the rows dropped). With ``on_bad_row == "error"`` the first bad
        gold raises :class:`DataError` naming its dataset row.
    """
    parse = _gold_parser()
    if parse is None:
        return rows, []
    rows, indices, dropped = list(rows), list(indices), []
    while rows:
        try:
            parse([r["answer"] for r in rows])
            break
        except ValueError as e:
            msg = str(e).splitlines()[0]
            k = int(msg.split(":", 1)[0].removeprefix("row ")) if msg.startswith("row ") and ":" in msg else None
            if k is None or not 0 <= k < len(rows):
                raise DataError(f"{source}: gold answers cannot be parsed: {msg[:200]}") from None
            reason = msg.split(":", 1)[1].strip().removesuffix("; fix or drop the row")[:200]
            if on_bad_row == "error":
                raise DataError(f"{source}: bad row {indices[k]}: {reason}; fix the data or set "
                                "task_kwargs.on_bad_row: skip") from None
            dropped.append(f"row {indices[k]}: {reason}")
            del rows[k], indices[k]  # rows before k passed; parse the rest again
    return rows, dropped


GOLD_FORMATS: dict[str, Callable[[Any], str]] = {
    "raw": lambda v: str(v).strip(),
    "gsm8k": lambda v: gsm8k_gold(str(v)),
    "boxed": lambda v: _require(last_boxed(str(v)), "no \\boxed{} answer in the solution"),
}


def _require(value: str | None, why: str) -> str:
    if value is None:
        raise ValueError(why)
    return value


# --- loading datasets ----------------------------------------------------------------------------------

_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(path: str, name: str | None = None, split: str = "train") -> list[dict]:
    """Rows of a dataset: a hub name (``openai/gsm8k``), a local JSONL/JSON/Parquet/CSV file, or a local folder.

    A single local file has one split, ``train``; ``split`` may still slice it (``train[:1000]``).

    Raises:
        DataError: one line saying what was tried and how to run offline.
    """
    return _load_rows(Path(path).expanduser(), path, name, split)


def _load_rows(local: Path, path: str, name: str | None, split: str) -> list[dict]:
    import datasets  # heavy: import only when a dataset task is used

    # Progress bars only for downloads: a local file loads in a blink and the bars would bury the logs.
    bars = datasets.utils.is_progress_bar_enabled()
    if local.exists():
        datasets.utils.disable_progress_bar()
    try:
        if local.is_file():
            builder = _LOCAL_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise DataError(f"dataset file {path} has an unknown type; use .jsonl, .json, .parquet or .csv")
            file_split = "train" + split[split.index("[") :] if "[" in split else "train"
            ds = datasets.load_dataset(builder, data_files=str(local), split=file_split)
        elif local.is_dir() and (local / "dataset_info.json").is_file() and (local / "state.json").is_file():
            ds = datasets.load_from_disk(str(local))  # a Dataset.save_to_disk folder
        else:
            ds = datasets.load_dataset(str(local) if local.is_dir() else path, name, split=split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "could not load"
        where = "local folder" if local.is_dir() else "the Hugging Face hub (no such local file)"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise DataError(
            f"cannot load dataset {path!r} (config {name}, split {split}) from {where}{offline}: {reason}; to run "
            "offline give a local .jsonl/.parquet/.csv file or folder as task_kwargs.path, or download it once and "
            "set HF_HUB_OFFLINE=1"
        ) from None
    finally:
        if bars:
            datasets.utils.enable_progress_bar()
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"dataset {path!r} has no split {split!r}; its splits: {', '.join(ds)}")
        ds = ds[split]
    return ds.to_list()


def normalize_rows(raw: list[dict], normalize: Callable[[dict], dict | None], source: str,
                   on_bad_row: str = "error", golds: bool = True) -> tuple[list[dict], int]:
    """Apply ``normalize`` to every row, then (``golds``) parse every gold answer in one batch.

    ``normalize`` returns the clean row, or ``None`` for a row filtered out on purpose (not bad); a row it
    rejects (``ValueError``/``KeyError``/``TypeError``) or whose gold does not parse is bad.

    Returns:
        (clean rows, number of bad rows skipped).

    Raises:
        DataError: on the first bad row when ``on_bad_row == "error"``, naming its index.
    """
    out, indices, bad = [], [], []
    for i, row in enumerate(raw):
        try:
            clean = normalize(row)
        except (ValueError, KeyError, TypeError) as e:
            reason = f"missing column {e.args[0]!r}" if isinstance(e, KeyError) else str(e).splitlines()[0][:200]
            if on_bad_row == "error":
                raise DataError(f"{source}: bad row {i}: {reason}; fix the data or set "
                                "task_kwargs.on_bad_row: skip") from None
            bad.append(f"row {i}: {reason}")
            continue
        if clean is not None:
            out.append(clean)
            indices.append(i)
    if golds:
        out, dropped = validate_golds(out, indices, source, on_bad_row)
        bad += dropped
    if bad:
        log.warning("%s: skipped %d bad rows of %d (first: %s)", source, len(bad), len(raw), bad[0])
    return out, len(bad)


@dataclass
class DatasetSpec:
    """Where a dataset task's rows come from and how they become (question, answer, columns) rows."""

    path: str
    name: str | None = None
    split: str = "train"
    eval_path: str | None = None  # default: the same path
    eval_name: str | None = None
    eval_split: str | None = "test"  # None: hold out the last num_eval rows of the train split
    num_eval: int | None = None  # cap on eval rows (the first ones); None = all
    max_train: int | None = None  # cap on train rows (the first ones); None = all
    template: str = "r1"
    prefill_think: bool = False
    system_prompt: str | None = None
    on_bad_row: str = "error"
    eval_only: bool = False  # load only the eval rows (standalone evaluation); the train stream is then empty


def dataset_task(name: str, spec: DatasetSpec, normalize: Callable[[dict], dict | None],
                 eval_normalize: Callable[[dict], dict | None] | None = None, golds: bool = True) -> Task:
    """A task over a finite dataset: rows normalised (gold in ``answer``) and validated now, prompts rendered lazily."""
    if spec.on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row must be 'error' or 'skip', got {spec.on_bad_row!r}")
    if spec.template not in TEMPLATES and "{question}" not in spec.template:
        raise DataError(f"unknown template {spec.template!r}; use one of {', '.join(TEMPLATES)} or a string "
                        "with {question}")
    held_out = spec.eval_split is None and spec.eval_path is None
    train, bad = [], 0
    if held_out or not spec.eval_only:
        raw = load_rows(spec.path, spec.name, spec.split)
        if spec.max_train is not None:
            raw = raw[: spec.max_train]
        train, bad = normalize_rows(raw, normalize, f"{name} {spec.path} [{spec.split}]", spec.on_bad_row, golds)
    if held_out:
        n_eval = spec.num_eval if spec.num_eval is not None else min(256, len(train) // 10)
        if n_eval >= len(train):
            raise DataError(f"{name}: {len(train)} train rows cannot spare {n_eval} for evaluation; lower num_eval")
        train, evals, eval_bad = train[: len(train) - n_eval], train[len(train) - n_eval :], 0
    else:
        eval_path = spec.eval_path or spec.path
        eval_name = spec.eval_name if spec.eval_path else (spec.eval_name or spec.name)
        eval_split = spec.eval_split or "train"
        raw_eval = load_rows(eval_path, eval_name, eval_split)
        evals, eval_bad = normalize_rows(raw_eval, eval_normalize or normalize, f"{name} {eval_path} [{eval_split}]",
                                         spec.on_bad_row, golds)
        if spec.num_eval is not None:
            evals = evals[: spec.num_eval]
    if not train and not spec.eval_only:
        raise DataError(f"{name}: no usable train rows in {spec.path} [{spec.split}]; check the path, split and "
                        "filters")
    if not evals:
        raise DataError(f"{name}: no usable eval rows; check eval_path / eval_split, or set eval_split: null to hold "
                        "out train rows")
    task = Task(name, lambda seed: DatasetStream(train, seed, render), evals)

    def render(row: dict) -> dict:
        out = dict(row)
        out["prompt"] = render_prompt(row["question"], spec.template, task.tokenizer, spec.system_prompt,
                                      spec.prefill_think)
        return out

    task._render = render
    task.template, task.prefill_think = spec.template, spec.prefill_think
    task.system_prompt = spec.system_prompt  # a named one (r1, qwen_math) sets the reward defaults under chat
    task.stats = {"train_rows": len(train), "eval_rows": len(evals), "bad_rows_skipped": bad + eval_bad}
    return task


def _spec(kwargs: dict, **defaults: Any) -> DatasetSpec:
    """``DatasetSpec`` from task defaults overridden by the user's ``task_kwargs``; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(DatasetSpec)}
    bad = sorted(set(kwargs) - known)
    if bad:
        raise TypeError(f"unknown task_kwargs {bad}; known: {', '.join(sorted(known))}")
    return DatasetSpec(**{**defaults, **kwargs})


def _split_kwargs(kwargs: dict, own: tuple[str, ...]) -> tuple[dict, dict]:
    return {k: v for k, v in kwargs.items() if k not in own}, {k: kwargs[k] for k in own if k in kwargs}


@register_task("gsm8k")
def gsm8k_task(**kwargs: Any) -> Task:
    """GSM8K (``openai/gsm8k``, config ``main``): train split for training, test split (1319) for eval.

    The gold is the number after ``####`` in the solution, stored in ``answer``; the solution stays in
    ``solution``. Any ``DatasetSpec`` field can be overridden in ``task_kwargs`` (e.g. a local ``path``).
    """
    spec = _spec(kwargs, path="openai/gsm8k", name="main", split="train", eval_split="test", template="r1")

    def normalize(row: dict) -> dict:
        return {"question": _text(row, "question"), "answer": check_gold(gsm8k_gold(_text(row, "answer"))),
                "solution": row["answer"]}

    return dataset_task("gsm8k", spec, normalize)


def _text(row: dict, key: str) -> str:
    value = row[key]
    if value is None:  # a column absent from some rows of a JSONL file loads as None
        raise ValueError(f"column {key!r} is missing")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {key!r} is empty or not text")
    return value


def _level(value: Any) -> int | None:
    """MATH levels come as 3 or "Level 3" (and "Level ?" for a few rows)."""
    s = str(value).replace("Level", "").strip()
    return int(s) if s.isdigit() else None


def _math_normalize(levels: list[int] | None) -> Callable[[dict], dict | None]:
    def normalize(row: dict) -> dict | None:
        if levels is not None and _level(row.get("level")) not in levels:
            return None  # filtered out, not bad
        gold = row.get("answer")
        if not (isinstance(gold, str) and gold.strip()):
            gold = _require(last_boxed(_text(row, "solution")), "no 'answer' column and no \\boxed{} in the solution")
        return {"question": _text(row, "problem"), "answer": check_gold(gold), "level": _level(row.get("level"))}

    return normalize


@register_task("math")
def math_task(levels: list[int] | None = (3, 4, 5), **kwargs: Any) -> Task:
    r"""MATH: train on levels 3-5 of the 7.5k train problems, evaluate on MATH-500.

    Train: ``DigitalLearningGmbH/MATH-lighteval`` (the original Hendrycks MATH, as the Dr. GRPO / SimpleRL
    recipes use it). Eval: ``HuggingFaceH4/MATH-500``. The gold is the ``answer`` column when present, else
    the last ``\boxed{}`` of ``solution``. ``levels: null`` keeps every level; the eval set is never filtered.
    """
    spec = _spec(kwargs, path="DigitalLearningGmbH/MATH-lighteval", name="default", split="train",
                 eval_path="HuggingFaceH4/MATH-500", eval_split="test", template="qwen_math")
    if levels is not None and (isinstance(levels, (str, int)) or not all(isinstance(x, int) for x in levels)):
        raise TypeError(f"levels must be a list of ints like [3, 4, 5] or null, got {levels!r}")
    return dataset_task("math", spec, _math_normalize(list(levels) if levels is not None else None),
                        _math_normalize(None))


COUNTDOWN_QUESTION = (
    "Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic operations "
    "(+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the "
    "final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>"
)  # TinyZero's wording (examples/data_preprocess/countdown.py)


def countdown_row(target: Any, nums: Any) -> dict:
    """A Countdown row: ``question`` in TinyZero's words, ``answer`` = str(target), ``target`` and ``nums`` kept."""
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target must be an integer, got {target!r}")
    if not isinstance(nums, list) or not nums or not all(isinstance(n, int) and not isinstance(n, bool) for n in nums):
        raise TypeError(f"nums must be a non-empty list of integers, got {nums!r}")
    return {"question": COUNTDOWN_QUESTION.format(nums=nums, target=target), "answer": str(target),
            "target": target, "nums": nums}


@register_task("countdown")
def countdown_task(**kwargs: Any) -> Task:
    """Countdown (TinyZero): reach ``target`` from ``nums`` (3-4 numbers) with + - * / and each number once.

    ``Jiayi-Pan/Countdown-Tasks-3to4`` has one split; the last ``num_eval`` (default 512) rows are held out for
    evaluation. Rows keep ``target`` and ``nums`` for the ``countdown`` reward; ``answer`` is the target.
    """
    kwargs.setdefault("num_eval", 512)
    spec = _spec(kwargs, path="Jiayi-Pan/Countdown-Tasks-3to4", split="train", eval_split=None, template="r1",
                 prefill_think=True)
    return dataset_task("countdown", spec, lambda row: countdown_row(row["target"], row["nums"]), golds=False)


@register_task("dataset")
def generic_task(question_field: str = "question", answer_field: str = "answer", gold: str = "raw",
                 keep_columns: list[str] | None = None, **kwargs: Any) -> Task:
    """Any dataset with a question column and a gold column: ``path`` (hub name or local file) is required.

    Args:
        question_field: column holding the problem.
        answer_field: column holding the gold answer.
        gold: how to read the gold: ``raw`` (as is), ``gsm8k`` (after ``####``), ``boxed`` (last ``\\boxed{}``).
        keep_columns: extra columns passed through to rewards (default: all other columns).
        **kwargs: ``DatasetSpec`` fields (``path``, ``split``, ``eval_split``, ``template``...).
    """
    if "path" not in kwargs:
        raise TypeError("task 'dataset' needs task_kwargs.path (a hub name or a local .jsonl/.parquet/.csv file)")
    if gold not in GOLD_FORMATS:
        raise TypeError(f"gold must be one of {', '.join(GOLD_FORMATS)}, got {gold!r}")
    spec = _spec(kwargs, eval_split=kwargs.get("eval_split"))
    read_gold = GOLD_FORMATS[gold]

    def normalize(row: dict) -> dict:
        extra = {k: v for k, v in row.items() if k not in (question_field, answer_field)}
        if keep_columns is not None:
            extra = {k: row[k] for k in keep_columns}
        if row.get(answer_field) is None:
            raise ValueError(f"column {answer_field!r} is missing or empty")
        extra.pop("prompt", None)  # the rendered prompt is ours
        return {**extra, "question": _text(row, question_field), "answer": check_gold(read_gold(row[answer_field]))}

    return dataset_task("dataset", spec, normalize)
