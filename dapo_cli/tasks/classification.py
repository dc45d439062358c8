"""Sentiment and topic classification of generated texts whose label is certain.

Texts are composed from label-specific word lists in ``templates/tasks/classification.json``:
a sentiment text pairs a product with a clearly positive or negative adjective or remark
(a neutral one states only facts); a topic text joins a subject and a predicate from one
topic's lists. Nothing in a text belongs to another label.

- easy: sentiment positive/negative in one sentence; topic out of 3 labels, one sentence.
- medium: sentiment positive/negative/neutral in one or two sentences; topic out of 5 labels.
- hard: sentiment in two or three sentences with a neutral fact mixed in; topic out of all
  labels, two sentences.

The label set is listed in the prompt and carried in ``verify["labels"]``; the verifier is
exact match after normalisation, and an answer outside the label set is incorrect.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from dapo_cli.tasks.base import (
    ANSWER_INSTRUCTION,
    Score,
    Task,
    extract_answer,
    normalize_answer,
    normalize_prompt,
)
from dapo_cli.tasks.templates import load_template

KINDS = ("sentiment", "topic")
_TOPIC_LABELS = {"easy": 3, "medium": 5, "hard": None}  # None: every topic


def _sentiment(rng: random.Random, level: str, data: dict[str, Any]) -> tuple[str, str, list]:
    s = data["sentiment"]
    labels = ["positive", "negative"] + ([] if level == "easy" else ["neutral"])
    label = rng.choice(labels)
    item = rng.choice(s["items"])
    fill = {
        "item": item,
        "day": rng.choice(s["days"]),
        "month": rng.choice(s["months"]),
        "color": rng.choice(s["colors"]),
    }
    fact_count = {"easy": 0, "medium": 0, "hard": 1}[level]
    if label == "neutral":
        fact_count = rng.randint(1, 2) if level == "medium" else rng.randint(2, 3)
    sentences = [f.format(**fill) for f in rng.sample(s["facts"], fact_count)]
    if label != "neutral":
        adj = rng.choice(s["adjectives"][label])
        opinion = rng.choice(s["opinions"]).format(adj=adj, **fill)
        # a remark says "it", so it follows a sentence that names the item
        remark = rng.choice(s["remarks"][label]) if level != "easy" else None
        if level == "medium":
            sentences = [opinion] + ([remark] if rng.random() < 0.5 else [])
        elif level == "hard":
            sentences += [opinion] if rng.random() < 0.7 else []
            rng.shuffle(sentences)
            sentences.append(remark)
        else:
            sentences = [opinion]
    return " ".join(sentences), label, labels


def _topic(rng: random.Random, level: str, data: dict[str, Any]) -> tuple[str, str, list]:
    names = sorted(data["topics"])
    label = rng.choice(names)
    n_labels = _TOPIC_LABELS[level] or len(names)
    labels = [label] + rng.sample([n for n in names if n != label], n_labels - 1)
    rng.shuffle(labels)
    topic = data["topics"][label]
    n_sentences = 2 if level == "hard" else 1
    subjects = rng.sample(topic["subjects"], n_sentences)
    predicates = rng.sample(topic["predicates"], n_sentences)
    opener = rng.choice(data["openers"])
    if opener:
        subjects[0] = opener + subjects[0][0].lower() + subjects[0][1:]
    text = " ".join(f"{s} {p}." for s, p in zip(subjects, predicates, strict=True))
    return text, label, labels


class ClassificationTask(Task):
    name = "classification"
    description = "sentiment and topic labels of generated texts, from a listed label set"

    def generate(self, rng: random.Random, difficulty: str) -> dict[str, Any]:
        data = load_template("classification")
        kind = rng.choice(KINDS)
        text, label, labels = (_sentiment if kind == "sentiment" else _topic)(rng, difficulty, data)
        question = rng.choice(data["questions"][kind])
        prompt = (
            f"{question}\nText: {text}\nLabels: {', '.join(labels)}.\n"
            f"{data['label_note']} {ANSWER_INSTRUCTION}"
        )
        return {"prompt": prompt, "answer": label, "verify": {"labels": labels}}

    def dedupe_key(self, sample: Mapping[str, Any]) -> str:
        # the same text with the same label set is one problem, however it is asked
        texts = [ln for ln in sample["prompt"].splitlines() if ln.startswith("Text: ")]
        labels = (sample.get("verify") or {}).get("labels")
        if len(texts) != 1 or not isinstance(labels, list):
            return super().dedupe_key(sample)
        label_set = ",".join(sorted(normalize_answer(str(label)) for label in labels))
        return f"{label_set}|{normalize_prompt(texts[0])}"

    def check_verify(self, verify: Mapping[str, Any]) -> str | None:
        labels = verify.get("labels")
        if not isinstance(labels, list) or len(labels) < 2:
            return "needs 'labels': a list of at least two label strings"
        if not all(isinstance(label, str) and label.strip() for label in labels):
            return "every entry of 'labels' must be a non-empty string"
        if len({normalize_answer(label) for label in labels}) != len(labels):
            return "'labels' lists the same label twice"
        return None

    def verify(self, sample: Mapping[str, Any], completion: str) -> Score:
        extracted = extract_answer(completion)
        if extracted is None:
            return Score.binary(False, extracted=None, reason="no 'Answer:' found")
        answer = normalize_answer(extracted)
        labels = [normalize_answer(str(label)) for label in sample["verify"]["labels"]]
        if answer not in labels:
            return Score.binary(False, extracted=extracted, reason="not one of the labels")
        return Score.binary(answer == normalize_answer(str(sample["answer"])), extracted=extracted)
