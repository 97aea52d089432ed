# Sourced by the CPU run scripts (run_isa_comparison.sh, run_bf16_goals.sh) with $RUN_NAME set:
# makes $OUT (default benchmarks/results/<RUN_NAME>_<date>, or -2, -3, ... after it where that
# is taken, so that a second run on a day keeps the first), sets the project up
# (scripts/bootstrap.sh) and enters its virtual environment, writes $OUT/cpu.txt (lscpu and
# kernel_info()), and defines step.
if [ -z "${OUT:-}" ]; then
  OUT=benchmarks/results/${RUN_NAME}_$(date +%Y-%m-%d)
  base=$OUT run=2
  while [ -e "$OUT" ]; do OUT=$base-$run run=$((run + 1)); done
fi
mkdir -p "$OUT"
echo "== results in $OUT"
bash scripts/bootstrap.sh
. "${VENV:-.venv}/bin/activate"
step() {  # step NAME CMD...: the command's output in $OUT/NAME.log, and its time
  local name=$1 start=$SECONDS
  shift
  "$@" >"$OUT/$name.log" 2>&1
  echo "== $name took $((SECONDS - start)) s"
}
{ lscpu; python -c "import dabdetr; print(dabdetr.kernel_info())"; } >"$OUT/cpu.txt"
