"""Chapter 7's LLM-judge client against a real HTTP server on 127.0.0.1 (an ephemeral port) that
speaks Ollama's /api/chat and the OpenAI-compatible /v1/chat/completions: scores parsed, a reply
without a number counted, HTTP 500, malformed JSON, a timeout, and a server that is down."""
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ROOT, exports, free_port, import_path

pc = exports("ch07")
TIMEOUT = 0.4  # the client's timeout in these tests; the slow reply takes 1.5 s


class JudgeHandler(BaseHTTPRequestHandler):
    """Answers according to a marker in the answer being graded (SCORE=n, WORDS, HTTP500, BADJSON, SLOW)."""

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path in ("/api/tags", "/v1/models"):
            self._send(200, {"models": [], "data": []})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, payload))
        prompt = payload["messages"][0]["content"]
        answer = prompt.split("Answer to grade:\n", 1)[1]
        if "HTTP500" in answer:
            return self._send(500, {"error": "internal"})
        if "BADJSON" in answer:
            return self._send(200, b"{not json")
        if "SLOW" in answer:
            time.sleep(1.5)
        match = re.search(r"SCORE=(\d+)", answer)
        text = f"Score: {match.group(1)}" if match else "A fine answer, well written."
        if self.path == "/api/chat":
            return self._send(200, {"model": payload["model"], "message": {"role": "assistant", "content": text},
                                    "done": True})
        if self.path == "/v1/chat/completions":
            return self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
        self._send(404, {"error": "not found"})


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    srv.daemon_threads = True
    srv.block_on_close = False
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url_of(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}"


def entries(*answers):
    return [{"instruction": f"Task {i}.", "input": "", "output": "Reference.", "model_response": a}
            for i, a in enumerate(answers)]


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_both_api_shapes_scores_and_failures(server, api):
    batch = entries("SCORE=85", "SCORE=40", "WORDS", "HTTP500", "BADJSON", "SLOW", "SCORE=100")
    start = time.time()
    result = pc.judge_responses(batch, url_of(server), "judge-model", api=api, timeout=TIMEOUT)
    assert time.time() - start < 1.4  # the slow reply was abandoned after the timeout
    assert result["scores"] == [85, 40, None, None, None, None, 100]
    reasons = dict(result["problems"])
    assert sorted(reasons) == [2, 3, 4, 5]
    assert "no usable score" in reasons[2] and "HTTP 500" in reasons[3]
    assert "malformed JSON" in reasons[4] and "no reply within" in reasons[5]
    assert pc.judge_summary(result) == "judge average: 75.00 (3 of 7 scored)"
    path, payload = server.requests[0]
    assert path == pc.JUDGE_PATHS[api] and payload["model"] == "judge-model" and payload["stream"] is False
    settings = payload["options"] if api == "ollama" else payload
    assert settings["seed"] == 123 and settings["temperature"] == 0
    assert pc.judge_available(url_of(server), api)


def test_endpoint_urls_and_default_url(monkeypatch):
    assert pc.judge_endpoint("http://h:1/", "ollama") == "http://h:1/api/chat"
    assert pc.judge_endpoint("http://h:1/v1", "openai") == "http://h:1/v1/chat/completions"
    assert pc.judge_endpoint("http://h:1/v1/chat/completions", "openai") == "http://h:1/v1/chat/completions"
    with pytest.raises(ValueError, match="unknown judge API"):
        pc.judge_endpoint("http://h:1", "anthropic")
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert pc.default_judge_url() == "http://127.0.0.1:11434"
    for value, url in [("0.0.0.0", "http://127.0.0.1:11434"), ("myhost:9999", "http://myhost:9999"),
                       ("https://box.example:443", "https://box.example:443")]:
        monkeypatch.setenv("OLLAMA_HOST", value)
        assert pc.default_judge_url() == url


def test_parse_score():
    assert [pc.parse_score(r) for r in ["85", " 7 ", "Score: 92/100", "99.6", "no idea", "", "101", "-5", None]] == \
        [85, 7, 92, 100, None, None, None, None, None]


def test_server_down():
    url = f"http://127.0.0.1:{free_port()}"
    assert not pc.judge_available(url, timeout=0.5)
    with pytest.raises(pc.JudgeUnreachable, match="no server answers"):
        pc.judge_responses(entries("SCORE=1"), url, "m", timeout=0.5)


def test_evaluate_script_with_a_judge_and_with_none(server, tmp_path):
    path = tmp_path / "responses.json"
    batch = entries("SCORE=60", "HTTP500", "SCORE=30")
    batch[0]["output"] = batch[0]["model_response"] = "SCORE=60 exactly"
    path.write_text(json.dumps(batch))
    cmd = [sys.executable, str(ROOT / "ch07/evaluate.py"), str(path), "--no-progress", "--timeout", "5"]
    res = subprocess.run(cmd + ["--judge-url", url_of(server), "--api", "openai"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "responses: 3" in res.stdout and "exact match: 33.3%" in res.stdout
    assert "judge, entry 1: HTTP 500" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "judge average: 45.00 (2 of 3 scored)"

    res = subprocess.run(cmd + ["--judge-url", f"http://127.0.0.1:{free_port()}"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "ROUGE-L F1:" in res.stdout
    assert res.stderr.startswith("error: --judge-url http://127.0.0.1:") and "Traceback" not in res.stderr

    path.write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    evaluate = import_path("ch07/evaluate.py")
    with pytest.raises(ValueError, match="entry 0 has no string 'model_response'"):
        evaluate.main([str(path)])
