"""Files API through the real SDK: upload, retrieve, content, list, delete, large uploads."""

from __future__ import annotations

import http.client
import os

import openai
import pytest
from openai import OpenAI

from batchor_core.testing import OpenAIEmulator

from .helpers import chat_line, jsonl, raw_request, upload

pytestmark = pytest.mark.integration


def test_upload_retrieve_content_delete(client: OpenAI, emu: OpenAIEmulator) -> None:
    data = jsonl([chat_line("a", "hello"), chat_line("b", "world")])
    created = upload(client, data)
    assert created.object == "file"
    assert created.id.startswith("file-")
    assert created.bytes == len(data)
    assert created.filename == "input.jsonl"
    assert created.purpose == "batch"
    assert created.status == "processed"
    assert created.expires_at is not None and created.expires_at > created.created_at

    fetched = client.files.retrieve(created.id)
    assert fetched == created
    assert client.files.content(created.id).content == data
    assert emu.file_content(created.id) == data
    assert [f["id"] for f in emu.files()] == [created.id]

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)
    assert emu.files() == []


def test_list_files_filters_and_orders(client: OpenAI) -> None:
    first = upload(client, b"{}\n")
    second = upload(client, b"{}\n", purpose="user_data")
    listed = client.files.list()
    assert [f.id for f in listed.data] == [second.id, first.id]  # newest first
    assert [f.id for f in client.files.list(purpose="batch").data] == [first.id]
    assert [f.id for f in client.files.list(order="asc").data] == [first.id, second.id]


def test_upload_rejects_unknown_purpose(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, b"{}\n", purpose="nonsense")
    assert caught.value.param == "purpose"


def test_large_upload_streams_to_disk_intact(client: OpenAI, emu: OpenAIEmulator) -> None:
    # ~6 MB spanning many parser chunks, with boundary-like bytes inside the data.
    block = b"--not-a-boundary\r\n" + os.urandom(4096) + b"\r\n--\r\n"
    data = block * 1500
    created = upload(client, data)
    assert created.bytes == len(data)
    assert emu.file_content(created.id) == data
    assert client.files.content(created.id).content == data


def test_chunked_multipart_upload(emu: OpenAIEmulator) -> None:
    boundary = "xYzBoundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.jsonl"\r\n'
            f"Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + b'{"x": 1}\n' * 1000
        + f"\r\n--{boundary}--\r\n".encode()
    )
    connection = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    try:
        connection.putrequest("POST", "/v1/files")
        connection.putheader("Authorization", "Bearer sk-test")
        connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for start in range(0, len(body), 777):
            piece = body[start : start + 777]
            connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert response.status == 200, payload
    [stored] = emu.files()
    assert stored["filename"] == "c.jsonl"
    assert emu.file_content(stored["id"]) == b'{"x": 1}\n' * 1000


def test_multipart_without_file_is_a_400(emu: OpenAIEmulator) -> None:
    status, _, body = raw_request(emu, "POST", "/v1/files", body={"purpose": "batch"})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
