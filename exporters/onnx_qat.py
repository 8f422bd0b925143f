"""ONNX QDQ from a quantization-aware-trained model (:mod:`edgecomp.qat`), on its trained scales.

tf2onnx turns each activation fake-quant op (``FakeQuantWithMinMaxVars``) into a
QuantizeLinear/DequantizeLinear pair with the trained range (uint8, asymmetric: the same grid
as LiteRT's int8 with the zero point moved by 128). It cannot convert the weights' per-channel
narrow-range fake quantization (tf2onnx 1.17 has no ``FakeQuantWithMinMaxVarsPerChannel`` and
refuses ``narrow_range``), so the model is traced with its quantized kernels baked in as float
constants (:func:`edgecomp.qat_layers.baked`), and :func:`quantize_weights` (one graph rewrite) stores
each Conv/MatMul weight back as int8 behind a DequantizeLinear with its per-channel (Dense: per
tensor) scale, and each Conv bias as int32 on ``input scale x weight scale``, the form ONNX
Runtime fuses into QLinearConv / QLinearMatMul. No calibration and no ``quantize_static``: every
scale in the file is a trained one.

    >>> proto = tf2onnx_of_baked_qat_model(...)
    >>> quantize_weights(proto, bits=8)       # -> [{"node": "conv1", "weight": ..., "axis": 0}, ...]
"""

from __future__ import annotations

import numpy as np

from edgecomp.errors import EdgecompError

#: Weighted ONNX ops: weight input position, the axis of output channels (None: per tensor).
_WEIGHTED = {"Conv": (1, 0), "MatMul": (1, None), "Gemm": (1, None)}


def _scales(w: np.ndarray, axis, bits: int) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    if axis is None:
        m = np.max(np.abs(w))
    else:
        m = np.max(np.abs(w), axis=tuple(i for i in range(w.ndim) if i != axis))
    return (np.maximum(m, 1e-8 * 127 / qmax) / qmax).astype(np.float32)


def quantize_weights(proto, bits: int = 8) -> list[dict]:
    """Rewrite ``proto`` in place: each Conv/MatMul/Gemm weight initializer on the int8 grid
    becomes int8 + DequantizeLinear; returns one record per weight rewritten.

    A weight that is not on its grid (not from a QAT model) is an error, since storing it as
    int8 would change what the file computes.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    done, new_nodes, new_inits, drop = [], [], [], set()

    def const(name, array):
        new_inits.append(numpy_helper.from_array(array, name))
        return name

    for node in graph.node:
        spec = _WEIGHTED.get(node.op_type)
        if spec is None or len(node.input) <= spec[0] or node.input[spec[0]] not in inits:
            continue
        pos, axis = spec
        wname = node.input[pos]
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        if w.ndim < 2:
            continue
        s = _scales(w, axis, bits)
        shape = [1] * w.ndim
        if axis is not None:
            shape[axis] = -1
        q = np.rint(w / s.reshape(shape))
        off = float(np.max(np.abs(w / s.reshape(shape) - q)))
        if off > 1e-2:
            raise EdgecompError(f"ONNX QAT export: weight {wname} of {node.name} is not on its int8 grid "
                                f"(off by {off:.3f} steps)", fix="export the model edgecomp.qat trained")
        base = f"{wname}_qdq"
        dq_attr = {"axis": axis} if axis is not None else {}
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [const(f"{base}_q", q.astype(np.int8)), const(f"{base}_scale", s),
                                 const(f"{base}_zp", np.zeros(s.shape, np.int8))],
            [f"{base}_dq"], name=f"{base}_dq", **dq_attr))
        if readers.get(wname, 0) == 1:
            drop.add(wname)
        node.input[pos] = f"{base}_dq"
        record = {"node": node.name, "weight": wname, "axis": axis, "channels": int(s.size)}
        src = producer.get(node.input[0])
        if (node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in inits and src is not None
                and src.op_type == "DequantizeLinear" and src.input[1] in inits):
            in_scale = float(numpy_helper.to_array(inits[src.input[1]]).reshape(-1)[0])
            bname = node.input[2]
            b = numpy_helper.to_array(inits[bname]).astype(np.float64)
            bs = (in_scale * s.astype(np.float64)).astype(np.float32)
            bq = np.clip(np.rint(b / bs), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            new_nodes.append(helper.make_node(
                "DequantizeLinear", [const(f"{bname}_qdq_q", bq), const(f"{bname}_qdq_scale", bs),
                                     const(f"{bname}_qdq_zp", np.zeros(bs.shape, np.int32))],
                [f"{bname}_qdq_dq"], name=f"{bname}_qdq_dq", axis=0))
            if readers.get(bname, 0) == 1:
                drop.add(bname)
            node.input[2] = f"{bname}_qdq_dq"
            record["bias"] = bname
        done.append(record)

    kept = [i for i in graph.initializer if i.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    nodes = new_nodes + list(graph.node)   # the DequantizeLinear nodes read initializers only: first is topological
    del graph.node[:]
    graph.node.extend(nodes)
    return done
