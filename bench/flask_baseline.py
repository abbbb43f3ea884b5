"""The seed-style baseline: Flask, the model fixed at start-up, a DataFrame per request.

Run: python bench/flask_baseline.py MODEL.joblib PORT
"""

import sys

import joblib
import pandas as pd
from flask import Flask, jsonify, request

model = joblib.load(sys.argv[1])
app = Flask(__name__)


@app.route("/predict", methods=["POST"])
def predict():
    probability = float(model.predict_proba(pd.DataFrame([request.json]))[0])  # one pipeline pass
    return jsonify(churn_probability=probability, churn_label=int(probability >= model.threshold))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[2]), threaded=True)
