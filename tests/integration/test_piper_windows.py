"""The real Piper voice, split once and decoded a window at a time: the same audio as decoding it whole."""

import json
import logging
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from broadcaster.errors import BadInput, GenerationError
from tts.piper_engine import PiperEngine, default_model_path
from tts.voice_split import BACK_NODE, back_input
from tts.windowed import WindowedSession, split_voice, windowed_session

pytestmark = pytest.mark.piper

LONG = (
    "The caravan wound its way through the mountain pass, and the merchants, weary from the long road, "
    "spoke of the harbour city they would reach before the first snows of winter came down."
)


@pytest.fixture(scope="module")
def voice_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("voices")


class CountingSession:
    def __init__(self, session) -> None:
        self.session, self.runs = session, 0

    def run(self, names, feeds):
        self.runs += 1
        return self.session.run(names, feeds)


def test_windowed_decoding_gives_the_whole_voices_audio_sample_for_sample(voice_cache):
    engine = PiperEngine(window_ms=1000, cache_dir=voice_cache)
    voice = engine.voice
    assert isinstance(voice.session, WindowedSession)
    whole = onnxruntime.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])
    ids = voice.phonemes_to_ids(voice.phonemize(LONG)[0])
    feeds = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
    }  # no noise: both runs are deterministic
    voice.session.decoder = counting = CountingSession(voice.session.decoder)
    voice.session.back = back = CountingSession(voice.session.back)
    windowed_audio = voice.session.run(None, feeds)[0]
    whole_audio = whole.run(None, feeds)[0]
    assert counting.runs >= 5, f"expected several seconds of speech to take several 1 s windows, took {counting.runs}"
    assert back.runs > counting.runs, "the decoder's back part runs on windows shorter still"
    assert windowed_audio.shape == whole_audio.shape
    assert float(np.abs(windowed_audio - whole_audio).max()) < 1e-4


def test_the_split_is_made_once_per_voice_file_and_a_stale_one_removed(tmp_path, monkeypatch):
    model = tmp_path / "voice.onnx"
    shutil.copyfile(default_model_path(), model)
    stale, other = tmp_path / "cache" / "voice-1-2-v1", tmp_path / "cache" / "voice-two-1-2-v1"
    stale.mkdir(parents=True)
    other.mkdir()
    first = split_voice(model, tmp_path / "cache")
    assert not stale.exists(), "a split of an older copy of the voice is removed"
    assert other.exists(), "another voice's is not"
    layout = json.loads((first / "layout.json").read_text())
    assert layout["decoder_output"] == "output"
    assert layout["back_input"] == "/dec/LeakyRelu_1_output_0", "the decoder is cut at its second upsampling"
    assert (first / "decoder_back.onnx").is_file()

    def no_subprocess(*args, **kwargs):
        raise AssertionError("expected the cached split to be used")

    monkeypatch.setattr("tts.windowed.subprocess.run", no_subprocess)
    assert split_voice(model, tmp_path / "cache") == first


def decoder_graph(back_reads: list[str]):
    """x -> /dec/a -> t1 -> the back part's first node -> t2 -> /dec/b (reading t2 and `back_reads`) -> out."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])
    nodes = [
        helper.make_node("Relu", ["x"], ["t1"], name="/dec/a"),
        helper.make_node("Relu", ["t1"], ["t2"], name=BACK_NODE),
        helper.make_node("Sum", ["t2", *back_reads], ["out"], name="/dec/b"),
    ]
    return helper.make_graph(nodes, "decoder", [x], [out])


def test_the_back_part_is_cut_off_only_when_it_reads_nothing_from_before_the_cut():
    assert back_input(decoder_graph([])) == "t1"
    assert back_input(decoder_graph(["x"])) is None, "a back part reading the frames again is not cut off"


def unsplittable_voice(tmp_path) -> str:
    """A model with Piper's inputs and output but no decoder, next to the real voice's config."""
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, None]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [3])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["scales"], ["output"], name="/pass")], "not-piper", inputs, [output]
    )
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    shutil.copyfile(f"{default_model_path()}.json", f"{path}.json")
    return str(path)


def test_a_voice_that_cannot_be_split_is_decoded_whole_and_the_log_says_why(tmp_path, caplog):
    model = unsplittable_voice(tmp_path)
    with pytest.raises(GenerationError, match="could not split voice odd.onnx.*expected a decoder node"):
        windowed_session(tmp_path / "odd.onnx", tmp_path / "cache", 100, onnxruntime.SessionOptions())
    with caplog.at_level(logging.WARNING):
        engine = PiperEngine(model, window_ms=3000, cache_dir=tmp_path / "cache")
    assert isinstance(engine.voice.session, onnxruntime.InferenceSession)
    assert "each sentence will be decoded whole" in caplog.text
    assert not list((tmp_path / "cache").glob("*odd-*")), "no half-made split is kept"


@pytest.mark.parametrize("settings", [None, "{}", "not json", '{"audio": {"sample_rate": 22050}}'])
def test_a_voice_whose_settings_are_missing_or_not_pipers_is_refused_naming_the_file(tmp_path, settings):
    """A voice copied without its .onnx.json, or with a broken one, was a traceback (KeyError); it is the
    operator's file, so a refusal that names it (exit 2 at start)."""
    model = tmp_path / "voice.onnx"
    model.symlink_to(default_model_path())
    if settings is not None:
        (tmp_path / "voice.onnx.json").write_text(settings)
    with pytest.raises(BadInput, match=r"expected a Piper voice's settings at .*voice\.onnx\.json"):
        PiperEngine(model)
