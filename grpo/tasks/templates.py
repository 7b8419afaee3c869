"""Prompt templates and the reward settings each template implies.

``r1`` is DeepSeek-R1's Table 1 text, ``qwen_math`` Qwen-Math's boxed prompt (SimpleRL-Zoo, Dr. GRPO), ``chat`` the
model's own chat template (instruct models), ``plain`` the question alone, or any string holding ``{question}``.
"""

from __future__ import annotations

from typing import Any

from grpo.errors import DataError
from grpo.tasks.base import Task
from rewards.spec import parse_spec

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
        text = tokenizer.apply_chat_template(chat_messages(question, system_prompt), tokenize=False,
                                             add_generation_prompt=True)
    elif "{question}" in template:
        text = template.replace("{question}", question)
    else:
        raise DataError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)} or a string with "
                        "{question}")
    if prefill_think:
        text += " <think>" if text.endswith(":") else "<think>"
    return text


def chat_messages(question: str, system_prompt: str | None = None) -> list[dict]:
    """The ``chat`` template's conversation: an optional system message (a ``SYSTEM_PROMPTS`` name or text) and the
    question as the user's message."""
    system_prompt = SYSTEM_PROMPTS.get(system_prompt, system_prompt) if system_prompt else None
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question.strip()}]


def reward_prompts(task: Task, rows: list[dict], texts: list[str]) -> list:
    """The prompts as rewards get them, as TRL passes them: conversations (message lists) under ``template: chat``,
    otherwise the prompt texts."""
    if getattr(task, "template", None) != "chat" or not all("question" in row for row in rows):
        return list(texts)
    return [chat_messages(str(row["question"]), getattr(task, "system_prompt", None)) for row in rows]


def reward_defaults(task: Task) -> dict[str, dict]:
    """Reward kwargs that match the task's template: where the answer is, and what the format is.

    ``qwen_math`` prompts ask for ``\\boxed{}``: ``answer_format: boxed`` and format ``template: boxed``. A
    prefilled ``<think>`` means the completion starts inside the think block: format ``prefilled_think: true``.
    """
    style = task.template
    if style == "chat":  # a named system prompt (r1, qwen_math) asks for that answer style
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
        kwargs = parse_spec(name, spec).kwargs
        for key, want in defaults.get(name, {}).items():
            have = kwargs.get(key, {"answer_format": "r1", "template": "r1", "prefilled_think": False}[key])
            if have != want and have not in ("auto", "last_number"):  # these read any template
                hint = f"prefill_think: {str(task.prefill_think).lower()}" if key == "prefilled_think" else \
                    f"template {task.template}"
                raise DataError(f"reward '{name}' has {key}: {have} but the task's prompt uses {hint}; set "
                                f"rewards.{name}.kwargs.{key}: {str(want).lower() if isinstance(want, bool) else want}")
