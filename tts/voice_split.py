"""Split a Piper voice into the part that reads the text and the part that makes the sound.

A Piper voice (VITS) runs in two stages: a text encoder, duration predictor and
flow turn phonemes into a latent sequence, about 86 frames per second of
speech, and a HiFi-GAN decoder turns those frames into samples. The decoder's
working memory is what grows with a sentence, some 16 MB per second of
speech, while the first stage's is a small fraction of it. The decoder is
convolutional, so it can be run on overlapping windows of frames and the
windows' middles put end to end (tts/windowed.py).

The published voices are one ONNX graph, so the split is done once per voice
file and the parts are kept in a cache directory. It runs as a script in
a process of its own (`python voice_split.py MODEL OUT_DIR`), because loading
a voice with the `onnx` package costs a few hundred MB for a moment, which the
server would otherwise keep in its heap.

The decoder is every node under `/dec/` (the module name PyTorch's export
gives it) plus what follows it up to the model's outputs. What it reads from
the rest of the graph becomes the first stage's outputs and the decoder's
inputs: the frames first, then anything else (a multi-speaker voice's speaker
embedding).

The decoder itself is cut once more, where its second upsampling layer
begins. Its last two stages work at 64 and 256 samples per frame and hold
nearly all of its working memory, yet they only reach about one frame to
each side of a sample (the whole decoder reaches some twelve), so they can
run on much shorter windows than the rest (tts/windowed.py). A decoder without that layer is
kept whole.
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DECODER_PREFIX = "/dec/"
FRAMES_NODE = "/dec/conv_pre/Conv"  # the decoder's first layer: its data input is the frame sequence
BACK_NODE = "/dec/ups.1/ConvTranspose"  # the second upsampling layer: where the decoder's back part begins
ENCODER, DECODER, BACK, LAYOUT = "encoder.onnx", "decoder.onnx", "decoder_back.onnx", "layout.json"


class NotSplittable(Exception):
    """The model is not laid out like a Piper (VITS) voice."""


def decoder_boundary(graph) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """(the decoder's inputs from the rest of the graph, frames first; the model outputs it makes)."""
    nodes = [node for node in graph.node if node.name.startswith(DECODER_PREFIX)]
    first = next((node for node in nodes if node.name == FRAMES_NODE), None)
    if first is None:
        raise NotSplittable(f"expected a decoder node {FRAMES_NODE!r}, found none")
    made = {name for node in nodes for name in node.output}
    constants = {init.name for init in graph.initializer}
    inputs: list[str] = [first.input[0]]
    for node in nodes:
        for name in node.input:
            if name and name not in made and name not in constants and name not in inputs:
                inputs.append(name)
    # After the decoder only reshaping is expected (Piper adds an Unsqueeze): follow it to the outputs.
    tail = made
    for node in graph.node:
        if not node.name.startswith(DECODER_PREFIX) and any(name in tail for name in node.input):
            tail = tail | set(node.output)
    outputs = [out.name for out in graph.output if out.name in tail]
    if len(outputs) != 1:
        raise NotSplittable(f"expected one model output made by the decoder, found {len(outputs)}")
    return inputs, outputs


def back_input(graph) -> str | None:  # noqa: ANN001
    """The tensor where the decoder's back part begins, if it reads nothing else from before it."""
    names = [node.name for node in graph.node]
    if BACK_NODE not in names:
        return None
    cut = graph.node[names.index(BACK_NODE)].input[0]
    known = {cut} | {init.name for init in graph.initializer}
    for node in graph.node[names.index(BACK_NODE) :]:  # ONNX graphs list their nodes in order
        if not all(name in known for name in node.input if name):
            return None
        known.update(node.output)
    return cut


def split(model: Path, out_dir: Path) -> None:
    """Write the parts and their layout into `out_dir`, all or nothing."""
    import onnx
    from onnx.utils import Extractor

    proto = onnx.load(str(model))
    graph = proto.graph
    decoder_inputs, decoder_outputs = decoder_boundary(graph)
    model_inputs = [value.name for value in graph.input]
    other_outputs = [out.name for out in graph.output if out.name not in decoder_outputs]
    extractor = Extractor(proto)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".split-"))
    try:
        onnx.save(extractor.extract_model(model_inputs, decoder_inputs + other_outputs), work_dir / ENCODER)
        cut = back_input(graph)
        onnx.save(extractor.extract_model(decoder_inputs, [cut] if cut else decoder_outputs), work_dir / DECODER)
        if cut:
            onnx.save(extractor.extract_model([cut], decoder_outputs), work_dir / BACK)
        layout = {
            "decoder_inputs": decoder_inputs,
            "decoder_output": decoder_outputs[0],
            "back_input": cut,
            "other_outputs": other_outputs,
            "outputs": [out.name for out in graph.output],
        }
        (work_dir / LAYOUT).write_text(json.dumps(layout), encoding="utf-8")
        try:
            os.rename(work_dir, out_dir)
        except OSError:
            if not (out_dir / LAYOUT).is_file():
                raise
            # another process split the same voice meanwhile: theirs stays
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def main() -> None:
    try:
        split(Path(sys.argv[1]), Path(sys.argv[2]))
    except NotSplittable as exc:
        print(f"not splittable: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
