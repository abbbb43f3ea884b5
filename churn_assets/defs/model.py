"""Model assets: the fitted preprocessing and the retrained challenger."""

import datetime as dt

import dagster as dg
from sklearn.pipeline import Pipeline

from churn_assets.core.encoding import fit_preprocessor
from churn_assets.core.markdown import md_table
from churn_assets.defs.resources import TrainingPlan
from churn_assets.core.training import MODEL_FAMILIES, ModelingFrames, train_challenger
from churn_assets.core.code_version import code_version


class ModelConfig(dg.Config):
    """Run config of ``churn_model``."""

    families: list[str] = list(MODEL_FAMILIES)
    seed: int = 42


@dg.asset(group_name="churn", kinds={"sklearn"}, io_manager_key="model_io_manager")
def fitted_scaler(context: dg.AssetExecutionContext, clean_features: ModelingFrames,
                  training_plan: TrainingPlan) -> dg.MaterializeResult:
    """Imputation, one-hot encoding and scaling, fitted on the training window only
    (never the holdout) and persisted with joblib."""
    spec = training_plan.feature_spec()
    # Fitted a chunk at a time (core.encoding): a 10 M-row window's full transform would
    # not fit the memory budget; the fitted result is the same.
    preprocessor = fit_preprocessor(spec, [clean_features.train, clean_features.validation])
    names = list(preprocessor.get_feature_names_out())
    one_hot = preprocessor.named_steps["columns"].named_transformers_["categorical"].named_steps["one_hot"]
    categories = {col: [str(c) for c in cats] for col, cats in zip(spec.categorical_features, one_hot.categories_)}
    return dg.MaterializeResult(
        value=preprocessor,
        metadata={"fitted_rows": clean_features.training_rows, "encoded_features": len(names),
                  "categories": dg.MetadataValue.json(categories)},
    )


@dg.asset(group_name="churn", kinds={"sklearn"}, io_manager_key="model_io_manager")
def churn_model(context: dg.AssetExecutionContext, config: ModelConfig,
                clean_features: ModelingFrames, fitted_scaler: Pipeline,
                training_plan: TrainingPlan) -> dg.MaterializeResult:
    """The challenger, as two fits of one recipe (``core.training.train_challenger``):
    every family fitted on the train weeks, which end one label horizon before the
    validation weeks; the best on validation kept, its calibrator chosen and its
    threshold tuned there. That evaluated fit is what the holdout scores. The same family
    is then fitted on the newest weeks with final labels: the deployed fit."""
    unknown = sorted(set(config.families) - set(MODEL_FAMILIES))
    if unknown or not config.families:
        raise dg.Failure(description=f"churn_model config: unknown model families {unknown or '(none given)'};"
                                     f" choose from {list(MODEL_FAMILIES)}", allow_retries=False)
    spec = training_plan.feature_spec()
    predictor, candidates = train_challenger(
        clean_features, spec, fitted_scaler, config.families, config.seed, code_version(),
        trained_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    rows = [{"family": f, "chosen": "yes" if f == predictor.family else "",
             **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}}
            for f, m in candidates.items()]
    calibration = predictor.validation_metrics.get("calibration", "?")
    context.log.info(f"chose {predictor.family} (validation ROC AUC {predictor.validation_metrics['roc_auc']:.4f},"
                     f" calibration {calibration})")
    window = predictor.data_window
    return dg.MaterializeResult(
        value=predictor,
        metadata={
            "model_family": predictor.family,
            "threshold": predictor.threshold,
            "validation_roc_auc": predictor.validation_metrics["roc_auc"],
            "candidates": dg.MetadataValue.md(md_table(rows)),
            "calibration": calibration,
            "evaluated_fit_weeks": dg.MetadataValue.json({"train": window.get("train")}),
            "deployed_fit_weeks": dg.MetadataValue.json({"serving": window.get("serving")}),
            "evaluated_fit_rows": len(clean_features.train),
            "deployed_fit_rows": clean_features.serving_rows(spec),
            "fingerprint": predictor.fingerprint,
            "code_version": predictor.code_version,
        },
    )

