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


PROMPT_PREFIX = "Classify: "


def _prefixed(item: BatchItem) -> str:
    return PROMPT_PREFIX + _helper(item)


def _helper(item: BatchItem) -> str:
    return str(item.payload["text"])


def test_module_constants_and_helpers_a_builder_uses_are_part_of_the_job() -> None:
    global PROMPT_PREFIX
    before = _fingerprint(_prefixed)
    assert _fingerprint(_prefixed) == before
    PROMPT_PREFIX = "Summarise: "
    try:
        assert _fingerprint(_prefixed) != before
    finally:
        PROMPT_PREFIX = "Classify: "
    assert _fingerprint(_prefixed) == before


def test_where_the_output_model_is_defined_is_not_part_of_the_job() -> None:
    from pydantic import BaseModel

    from batchor_core import JobChangedError
    from batchor_core.testing import FakeBatchProvider

    class Label(BaseModel):
        label: str

    moved = type("Label", (Label,), {"__module__": "pkg.defs", "__doc__": Label.__doc__})
    grown = type("Label", (Label,), {"__module__": "pkg.defs", "__annotations__": {"n": int}})
    runner = BatchRunner(
        storage=MemoryStateStore(), provider=FakeBatchProvider(lambda request: {"label": "x"})
    )

    def job(model: type[BaseModel]) -> BatchJob:
        return BatchJob(model="m", build_prompt=_prefixed, output_model=model)

    items = [BatchItem("a", {"text": "t"})]
    with runner:
        runner.start(job(Label), items=items, run_id="r")
        assert runner.job_fingerprint(job(moved)) != runner.job_fingerprint(job(Label))
        runner.start(job(moved), items=items, run_id="r")  # the same job: resumed
        assert runner.get_run("r", job=job(moved)).summary().total_items == 1
        try:
            runner.start(job(grown), items=items, run_id="r")
        except JobChangedError as exc:
            assert "the output model's schema" in str(exc)
        else:
            raise AssertionError("a changed output schema must be a changed job")
