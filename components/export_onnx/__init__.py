"""KFP component: export_onnx."""
