"""The compute engines behind a served network, without Triton: ONNX Runtime for ``.onnx`` files and an
AOTInductor package for ``.pt2`` files (copied next to ``network_runner.py``; the GPU check and the tests load it
directly). Both take and return float32 numpy arrays with the batch first, so the runner does not care which one
it holds.

On CUDA the AOTInductor engine replays CUDA graphs for small batches: a batch-1 request through a deep network is
hundreds of kernel launches, each costing microseconds of host time that a graph replays in one launch. Graphs are
captured at start-up for the configured batch sizes (static input and output buffers); a request is padded to the
nearest captured size, and larger batches run the package directly.
"""

from __future__ import annotations

import os

import numpy as np


def engine_for(path: str, item_shape: tuple[int, ...], device: str = "cpu", dtype: str = "float32",
               threads: int = 1, graph_batches: tuple[int, ...] = ()):
    """The engine for a network file: ``.onnx`` -> :class:`OnnxEngine`, ``.pt2`` -> :class:`AotiEngine`."""
    if path.endswith(".onnx"):
        if device != "cpu" or dtype != "float32":
            raise ValueError(f"{os.path.basename(path)}: the python-backend ONNX runner runs on CPU in float32 "
                             f"(GPU ONNX serving is the native onnxruntime backend)")
        return OnnxEngine(path, threads)
    if path.endswith(".pt2"):
        return AotiEngine(path, item_shape, device, dtype, graph_batches)
    raise ValueError(f"{path}: not an .onnx file or an AOTInductor .pt2 package")


class OnnxEngine:
    def __init__(self, path: str, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["OUTPUT"], {"INPUT": x.astype(np.float32, copy=False)})[0]


class AotiEngine:
    """An AOTInductor package compiled for ``device`` with inputs of ``dtype`` and items of ``item_shape``, with
    CUDA graphs for the batch sizes in ``graph_batches`` (on CUDA; ignored on CPU)."""

    def __init__(self, path: str, item_shape: tuple[int, ...], device: str = "cpu", dtype: str = "float32",
                 graph_batches: tuple[int, ...] = ()):
        import torch

        self.torch, self.item_shape = torch, tuple(item_shape)
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{os.path.basename(path)} was compiled for CUDA and this process sees no GPU")
        self.run = torch._inductor.aoti_load_package(path)
        self.graphs: dict[int, tuple] = {}
        if self.device.type == "cuda":
            self.graphs = {batch: self._capture(batch) for batch in sorted(set(graph_batches))}

    def _capture(self, batch: int) -> tuple:
        torch = self.torch
        static_in = torch.zeros((batch, *self.item_shape), dtype=self.dtype, device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # warm-up outside the graph (workspace allocations)
                self.run(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_out = self.run(static_in)
        return graph, static_in, static_out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        n = len(x)
        if tuple(x.shape[1:]) != self.item_shape:
            raise ValueError(f"items of shape {tuple(x.shape[1:])}; this package takes {self.item_shape}")
        graph_batch = min((b for b in self.graphs if b >= n), default=None)
        with torch.no_grad():
            if graph_batch is None:
                out = self.run(torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype))
            else:
                graph, static_in, static_out = self.graphs[graph_batch]
                static_in[:n].copy_(torch.from_numpy(np.ascontiguousarray(x)))
                static_in[n:].zero_()
                graph.replay()
                out = static_out[:n]
            return out.float().cpu().numpy()

