"""Synthetic twins of COCO captions, TextVQA and ScienceQA, drawn with PIL from a seed.

They keep each real task's prompt and answer format, so every loader, prompt and metric path is exercised offline,
and a tiny model can actually learn them (its answers then mean something). Samples are a pure function of
(task, seed, index): the same seed always gives the same samples, different seeds give different ones.
"""

from __future__ import annotations

import random
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from .sample import Sample

IMAGE_SIZE = 64
COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20),
          "purple": (140, 40, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
# Few short words in large glyphs at a fixed place, shapes near fixed places: a tiny vision tower (16 patches of
# 16 px) trained for minutes on 2 CPU cores learns these. Words moved by even +-2 px, or 20 words anywhere in 22 px
# glyphs, stayed at chance within that budget (measured).
WORDS = ("cat", "dog", "sun", "car", "bus", "tree", "book", "milk", "fish", "bird", "cake", "lamp")
GLYPH_SIZE = 24
SHAPE_JITTER = 2  # a shape's corner moves up to this many pixels from its slot's centred position

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
MCQ_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
TEXTVQA_QUESTION = "What word is written in the image?"
LETTERS = "ABCDE"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: tuple, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)


def _shapes_scene(rng: random.Random, n: int) -> tuple[Image.Image, list[tuple[str, str]]]:
    """``n`` (1 or 2) shapes, left to right; returns the image and [(color, shape), ...] in reading order."""
    objects = []
    while len(objects) < n:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        if all(color != c and shape != s for c, s in objects):  # distinct, so every question has one answer
            objects.append((color, shape))
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    slot = IMAGE_SIZE // n
    for i, (color, shape) in enumerate(objects):
        side = rng.randint(slot * 6 // 10, slot * 7 // 10) if n == 2 else rng.randint(30, 36)
        x0 = i * slot + (slot - side) // 2 + rng.randint(-SHAPE_JITTER, SHAPE_JITTER)
        y0 = (IMAGE_SIZE - side) // 2 + rng.randint(-SHAPE_JITTER, SHAPE_JITTER)
        _draw_shape(draw, shape, COLORS[color], (x0, y0, x0 + side, y0 + side))
    return img, objects


def _article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def coco_sample(rng: random.Random) -> Sample:
    img, objs = _shapes_scene(rng, rng.choice((1, 2)))
    names = [_article(f"{c} {s}") for c, s in objs]
    if len(names) == 1:
        refs = [names[0], f"{names[0]} on a white background", f"there is {names[0]}"]
    else:
        refs = [f"{names[0]} and {names[1]}", f"{names[0]} next to {names[1]}", f"{names[1]} and {names[0]}"]
    return Sample(img, CAPTION_PROMPT, refs, fields={"objects": objs})


def textvqa_sample(rng: random.Random) -> Sample:
    word = rng.choice(WORDS)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=GLYPH_SIZE)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = (IMAGE_SIZE - (right - left)) // 2 - left
    y = (IMAGE_SIZE - (bottom - top)) // 2 - top
    draw.text((x, y), word, fill=(0, 0, 0), font=font)
    return Sample(img, TEXTVQA_QUESTION + VQA_SUFFIX, [word] * 10, fields={"question": TEXTVQA_QUESTION})


def scienceqa_sample(rng: random.Random, colour_hint: bool = False) -> Sample:
    """``colour_hint``: the context names the colour too, which makes the question answerable from the text alone
    (a training curriculum: matching a colour to an option's letter is learned from text first, see train_tiny)."""
    # one shape: the tiny model must still see its colour and match it to an option's letter
    img, objs = _shapes_scene(rng, 1)
    color, shape = rng.choice(objs)
    hint = "The image shows " + " and ".join(_article(f"{c} {s}") if colour_hint else f"a {s}" for c, s in objs) + "."
    question = f"What color is the {shape}?"
    distractors = rng.sample([c for c in COLORS if c != color], rng.randint(1, 4))
    choices = distractors + [color]
    rng.shuffle(choices)
    answer = LETTERS[choices.index(color)]
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    prompt = f"Context: {hint}\n{question}\n{options}{MCQ_SUFFIX}"
    return Sample(img, prompt, [answer], fields={"hint": hint, "question": question, "choices": choices})


GENERATORS: dict[str, Callable[[random.Random], Sample]] = {
    "synthetic-coco": coco_sample, "synthetic-textvqa": textvqa_sample, "synthetic-scienceqa": scienceqa_sample}


def synthetic_samples(task: str, limit: int = 16, seed: int = 0, colour_hints: float = 0.0) -> list[Sample]:
    """``limit`` samples of a synthetic task; sample i depends only on (task, seed, i).

    ``colour_hints``: the share of ScienceQA samples whose context names the colour (training only; each sample's
    draw is its own, so the images and questions are those of ``colour_hints=0``).
    """
    make = GENERATORS[task]
    samples = []
    for i in range(limit):
        hinted = task == "synthetic-scienceqa" and random.Random(f"hint/{seed}/{i}").random() < colour_hints
        sample = make(random.Random(f"{task}/{seed}/{i}"), **({"colour_hint": True} if hinted else {}))
        sample.id, sample.task = f"{task}/{seed}/{i}", task
        samples.append(sample)
    return samples
