"""Validation errors in words people use, the same in the pages, the API and the Gradio UI.

pydantic's own messages read like a type checker ("Input should be greater than or equal to
1", "Value error, must not be blank", "String should have at least 1 character"). `human_message`
rewrites one error of `ValidationError.errors()` from its type and context; the API keeps
the error's `type` and `loc`, so clients still know which field it is and why.
"""

from __future__ import annotations

from typing import Any

VALUE_ERROR_PREFIXES = ("Value error, ", "Assertion failed, ")
# The context entry each kind's sentence is made from.
NEEDS_CONTEXT = {
    "greater_than_equal": "ge",
    "greater_than": "gt",
    "less_than_equal": "le",
    "less_than": "lt",
    "multiple_of": "multiple_of",
    "string_too_short": "min_length",
    "string_too_long": "max_length",
    "too_short": "min_length",
    "too_long": "max_length",
    "literal_error": "expected",
    "enum": "expected",
}


def _number(value: object) -> str:
    """1.0 as "1", 0.5 as "0.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _characters(count: object) -> str:
    return "1 character" if count == 1 else f"{count} characters"


def _items(count: object) -> str:
    return "1 item" if count == 1 else f"{count} items"


def _choices(expected: object) -> str:
    """pydantic's "'a', 'b' or 'c'" as "a, b or c"."""
    return str(expected).replace("'", "")


def human_message(error: dict[str, Any]) -> str:
    """What is wrong with one field, as a sentence's predicate ("must be at least 1")."""
    kind = str(error.get("type", ""))
    context: dict[str, Any] = error.get("ctx") or {}
    message = str(error.get("msg", "is not valid"))
    if kind in NEEDS_CONTEXT and NEEDS_CONTEXT[kind] not in context:
        return message  # an error re-made without its context: pydantic's words, not ours
    match kind:
        case "missing":
            return "is required"
        case "value_error" | "assertion_error":
            for prefix in VALUE_ERROR_PREFIXES:
                message = message.removeprefix(prefix)
            return message
        case "greater_than_equal":
            return f"must be at least {_number(context.get('ge'))}"
        case "greater_than":
            return f"must be more than {_number(context.get('gt'))}"
        case "less_than_equal":
            return f"must be at most {_number(context.get('le'))}"
        case "less_than":
            return f"must be less than {_number(context.get('lt'))}"
        case "multiple_of":
            return f"must be a multiple of {_number(context.get('multiple_of'))}"
        # A length limit on text reads "string_too_short", or "too_short" when it came as an
        # annotated-types constraint: the input tells which.
        case "string_too_short" | "too_short" if isinstance(error.get("input"), str):
            if context.get("min_length") == 1:
                return "must not be empty"
            return f"must be at least {_characters(context.get('min_length'))} long"
        case "string_too_long" | "too_long" if isinstance(error.get("input"), str):
            return f"must be at most {_characters(context.get('max_length'))} long"
        case "too_short":
            return f"needs at least {_items(context.get('min_length'))}"
        case "too_long":
            return f"takes at most {_items(context.get('max_length'))}"
        case "int_parsing" | "int_type" | "int_from_float":
            return "must be a whole number"
        case "float_parsing" | "float_type":
            return "must be a number"
        case "finite_number":
            return "must be a finite number (not NaN or infinity)"
        case "bool_parsing" | "bool_type":
            return "must be true or false"
        case "string_type":
            return "must be text"
        case "literal_error" | "enum":
            return f"must be one of: {_choices(context.get('expected'))}"
        case "extra_forbidden":
            return "is not a setting this accepts"
        case "json_invalid":
            return f"is not valid JSON ({context.get('error', 'could not be read')})"
        case "dict_type" | "model_type" | "model_attributes_type":
            return "must be an object with named fields"
        case "list_type":
            return "must be a list"
    return message
