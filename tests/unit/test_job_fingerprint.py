"""A job's fingerprint covers what its builder does, including values it closes over."""

from __future__ import annotations

from batchor_core import BatchItem, BatchJob, BatchRunner, MemoryStateStore, OpenAIProviderConfig


def _prompt_from(template: str):  # type: ignore[no-untyped-def]
    return lambda item: template.format(**item.payload)


class _Template:
    def __init__(self, template: str) -> None:
        self.template = template

    def __call__(self, item: BatchItem) -> str:
        return self.template.format(**item.payload)


def _fingerprint(builder: object) -> str:
    runner = BatchRunner(storage=MemoryStateStore(), provider=OpenAIProviderConfig(api_key="k"))
    try:
        return runner.job_fingerprint(BatchJob(model="m", build_prompt=builder))  # type: ignore[arg-type]
    finally:
        runner.close()


def test_a_changed_template_in_a_closure_is_a_changed_job() -> None:
    same = _fingerprint(_prompt_from("Classify: {text}"))
    assert _fingerprint(_prompt_from("Classify: {text}")) == same
    assert _fingerprint(_prompt_from("Summarise: {text}")) != same


def test_a_changed_attribute_of_a_callable_object_is_a_changed_job() -> None:
    same = _fingerprint(_Template("Classify: {text}"))
    assert _fingerprint(_Template("Classify: {text}")) == same
    assert _fingerprint(_Template("Summarise: {text}")) != same


def test_objects_in_a_closure_do_not_make_equal_jobs_differ() -> None:
    marker = object()
    other = object()

    def build(marker: object):  # type: ignore[no-untyped-def]
        return lambda item: f"{marker is not None} {item.item_id}"

    assert _fingerprint(build(marker)) == _fingerprint(build(other))
