"""The optional dependencies of :mod:`lambdahat.lm`, checked where they are needed."""

from __future__ import annotations

INSTALL_HINT = 'pip install "lambdahat[lm]"'


def require_transformers(what: str) -> None:
    """Raise an ``ImportError`` that says how to install the extra when ``transformers`` is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"lambdahat.lm.{what} needs Hugging Face transformers (and TransformerLens for HookedTransformer "
            f"models), which are not installed; install them with {INSTALL_HINT}."
        ) from exc
