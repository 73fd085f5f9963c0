import pytest

from lambdahat.modadd import ExperimentParams, classify_circuit, train


@pytest.mark.slow
def test_default_params_grok(tmp_path):
    params = ExperimentParams()
    run = train(params, tmp_path / "default", show_progress=False)
    rec = run.record
    assert len(rec) == params.n_save_model_checkpoints
    memorized = rec[rec.train_acc >= 0.99]
    assert len(memorized) > 0, "the default run never fitted its training set"
    first = memorized.iloc[0]
    # memorization comes first: when the training set is fitted the test accuracy is still low ...
    assert first.test_acc < 0.3, rec.to_string()
    # ... and it rises later, well after that point
    generalized = rec[rec.test_acc >= 0.9]
    assert len(generalized) > 0 and generalized.iloc[0].step >= first.step + 300, rec.to_string()
    final = rec.iloc[-1]
    assert final.train_acc == 1.0 and final.test_acc >= 0.95, rec.to_string()
    # the default run is a clock (measured for run_id 0: gradient symmetricity -0.03, distance irrelevance 0.98)
    assert classify_circuit(run).verdict == "clock"
