"""The CLI's request builder: a prompt from a template or from one field of each row.

A run's fingerprint covers its request builder. A builder made afresh in every process
(a lambda over the command-line flags) would look different each time, so the CLI uses
this class instead: its identity is the class plus :meth:`PromptRequest.fingerprint`,
which names exactly the flags that shape a request. Running ``batchor start`` twice with
the same flags resumes the same run; changing the template is refused as a changed job.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping

from batchor_core.errors import ConfigurationError
from batchor_core.models import BatchItem, Endpoint, JSONValue

__all__ = ["PromptRequest"]


class PromptRequest:
    """Builds the request body for one item.

    Exactly one of ``template`` and ``field`` is given.

    Args:
        endpoint: ``/v1/chat/completions`` or ``/v1/responses``.
        template: A ``str.format`` template over the item's payload, e.g.
            ``"Classify: {text}"``.
        field: The payload field whose value is the whole user message.
        system_prompt: An optional system message (``instructions`` for responses).

    Raises:
        ConfigurationError: Neither or both of ``template`` and ``field``, or a template
            with positional (``{}``) or malformed fields.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        template: str | None = None,
        field: str | None = None,
        system_prompt: str | None = None,
    ) -> None:
        if (template is None) == (field is None):
            raise ConfigurationError("give exactly one of --prompt-template and --prompt-field")
        if field is not None and not field:
            raise ConfigurationError("--prompt-field must name a column")
        self.endpoint = endpoint
        self.template = template
        self.field = field
        self.system_prompt = system_prompt
        self.fields = _template_fields(template) if template is not None else [str(field)]

    def fingerprint(self) -> str:
        """The flags that shape each request, as a stable string (see jobspec)."""
        return json.dumps(
            [self.endpoint, self.template, self.field, self.system_prompt], sort_keys=True
        )

    def prompt(self, payload: Mapping[str, JSONValue]) -> str:
        """The user message for one payload."""
        if self.template is not None:
            return self.template.format_map(payload)
        value = payload[str(self.field)]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def __call__(self, item: BatchItem) -> dict[str, JSONValue]:
        """The request body (``messages`` or ``input``) for ``item``."""
        text = self.prompt(item.payload)
        if self.endpoint == Endpoint.RESPONSES.value:
            body: dict[str, JSONValue] = {"input": text}
            if self.system_prompt:
                body["instructions"] = self.system_prompt
            return body
        messages: list[JSONValue] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": text})
        return {"messages": messages}

    def __repr__(self) -> str:
        return f"PromptRequest(template={self.template!r}, field={self.field!r})"


def _template_fields(template: str) -> list[str]:
    """The payload fields a template reads, in order of first use."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(f"--prompt-template is not a valid template: {exc}") from exc
    for _text, name, _spec, _conversion in parsed:
        if name is None:
            continue
        top = name.split(".", 1)[0].split("[", 1)[0]
        if not top or top.isdigit():
            raise ConfigurationError(
                "--prompt-template fields must be named after columns, e.g. 'Classify: {text}'"
            )
        if top not in names:
            names.append(top)
    if not names:
        raise ConfigurationError(
            "--prompt-template uses no column; name one in braces, e.g. 'Classify: {text}'"
        )
    return names
