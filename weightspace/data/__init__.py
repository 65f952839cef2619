"""Offline datasets. Real public datasets are reachable only in the `paper` preset."""
from .digits import DEFAULT_STYLES, STYLES, Split, StyledDigits, class_name, digits, styled_digits

__all__ = ["DEFAULT_STYLES", "STYLES", "Split", "StyledDigits", "class_name", "digits", "styled_digits"]
