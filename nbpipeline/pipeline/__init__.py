"""Running notebook stages under DVC: runner, kernel, tracer, thread share, dvc.yaml, authoring."""
