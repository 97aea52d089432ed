# Sourced by the CPU run scripts (run_isa_comparison.sh, run_bf16_goals.sh) once $OUT is set:
# makes $OUT, sets the project up (scripts/bootstrap.sh) and enters its virtual environment,
# writes $OUT/cpu.txt (lscpu and kernel_info()), and defines step.
mkdir -p "$OUT"
bash scripts/bootstrap.sh
. "${VENV:-.venv}/bin/activate"
step() {  # step NAME CMD...: the command's output in $OUT/NAME.log, and its time
  local name=$1 start=$SECONDS
  shift
  "$@" >"$OUT/$name.log" 2>&1
  echo "== $name took $((SECONDS - start)) s"
}
{ lscpu; python -c "import dabdetr; print(dabdetr.kernel_info())"; } >"$OUT/cpu.txt"
