"""Message helpers shared by every layer (no dependencies inside the package)."""


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``: a count and its noun, in agreement."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
