"""From a trained run to production: one ONNX graph (``onnx.py``, needs torch) and the runtime
that serves it with onnxruntime, tokenizers and numpy only (``runtime.py``)."""
