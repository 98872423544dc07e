"""BatchorBatchComponent loaded from a real defs.yaml, and materialized."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from batchor_core import BatchItem, ConfigurationError
from batchor_dagster import BatchorBatchComponent, PromptTemplate
from tests.dagster.conftest import materializations

pytestmark = pytest.mark.integration


def test_defs_yaml_builds_the_asset_sensor_and_resource_and_it_runs(
    tmp_path: Path, emulator: Any, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-component")
    data = tmp_path / "reviews.csv"
    data.write_text("id,text\n1,great phone\n2,battery died\n3,fine\n")
    attributes = {
        "asset_name": "reviews_classified",
        "input_path": str(data),
        "id_column": "id",
        "prompt_template": "Classify this review: {text}",
        "system_prompt": "You label product reviews.",
        "openai_model": "gpt-4o-mini",
        "output_model": "tests.dagster.conftest:Review",
        "storage_url": str(tmp_path / "b.sqlite3"),
        "artifact_root": str(tmp_path / "artifacts"),
        "openai_base_url": emulator.base_url,
        "sensor_interval_seconds": 30,
    }
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=BatchorBatchComponent,
            defs_yaml_contents={
                "type": "batchor_dagster.BatchorBatchComponent",
                "attributes": attributes,
            },
        )
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            assert isinstance(component, BatchorBatchComponent)
            asset = defs.get_assets_def("reviews_classified")
            (sensor,) = [s for s in defs.sensors or [] if s.name == "reviews_classified_sensor"]
            assert sensor.minimum_interval_seconds == 30
            assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
            job = defs.resolve_implicit_global_asset_job_def()
            for _ in range(5):
                if materializations(instance, asset.key):
                    break
                assert job.execute_in_process(instance=instance).success
    (mat,) = materializations(instance, asset.key)
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert meta["batchor/items_completed"] == 3 and meta["dagster/row_count"] == 3
    assert "sentiment" in meta["batchor/preview"]
    request = emulator.batches()[0]
    assert request["endpoint"] == "/v1/chat/completions"


def test_bad_attributes_fail_at_load_with_a_clear_message(tmp_path: Path) -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=BatchorBatchComponent,
            defs_yaml_contents={
                "type": "batchor_dagster.BatchorBatchComponent",
                "attributes": {
                    "asset_name": "x",
                    "input_path": str(tmp_path / "in.txt"),
                    "prompt_template": "{text}",
                    "output_model": "no_such_module:Model",
                },
            },
        )
        with (
            pytest.raises(Exception, match="BatchorBatchComponent") as raised,
            sandbox.load_component_and_build_defs(defs_path=path),
        ):
            pass
    cause = raised.value.__cause__ or raised.value.__context__
    assert cause is not None
    assert "cannot import output_model 'no_such_module:Model'" in str(cause)


def test_two_components_load_side_by_side(tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text("id,text\n1,a\n")
    with create_defs_folder_sandbox() as sandbox:
        for name in ("first", "second"):
            sandbox.scaffold_component(
                component_cls=BatchorBatchComponent,
                defs_path=name,
                defs_yaml_contents={
                    "type": "batchor_dagster.BatchorBatchComponent",
                    "attributes": {
                        "asset_name": name,
                        "input_path": str(data),
                        "prompt_template": "{text}",
                        "storage_url": str(tmp_path / "shared.sqlite3"),
                    },
                },
            )
        with sandbox.build_all_defs() as defs:
            assert {k.to_user_string() for k in defs.resolve_all_asset_keys()} == {
                "first",
                "second",
            }


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('JSON like {"a": 1} for {text}', "not a column name"),
        ("{0} and {text}", "not a column name"),
        ("{}", "not a column name"),
        ("unclosed {text", "malformed"),
    ],
)
def test_prompt_templates_are_checked_when_the_component_loads(template: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PromptTemplate(template)
    assert (
        PromptTemplate("literal {{braces}} and {text}")(BatchItem("1", {"text": "x"}))
        == "literal {braces} and x"
    )


def test_a_template_naming_a_missing_column_fails_before_anything_is_submitted(
    tmp_path: Path, emulator: Any, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-component")
    data = tmp_path / "reviews.csv"
    data.write_text("id,text\n1,great phone\n2,battery died\n")
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=BatchorBatchComponent,
            defs_yaml_contents={
                "type": "batchor_dagster.BatchorBatchComponent",
                "attributes": {
                    "asset_name": "typo",
                    "input_path": str(data),
                    "prompt_template": "Classify: {txt} (stars: {stars.value})",
                    "storage_url": str(tmp_path / "b.sqlite3"),
                    "artifact_root": str(tmp_path / "artifacts"),
                    "openai_base_url": emulator.base_url,
                },
            },
        )
        with sandbox.load_component_and_build_defs(defs_path=path) as (_component, defs):
            job = defs.resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "names a column the input lacks" in message and "'stars'" in message, message
    assert "'id', 'text'" in message or "id, text" in message, message
    assert emulator.batches() == []
