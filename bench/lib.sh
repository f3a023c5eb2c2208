# Sourced by the bench/*.sh scripts.  measure NAME CMD...: run CMD with stdout discarded,
# append "NAME<TAB>wall seconds<TAB>peak RSS MiB" to $OUT/results.tsv (and print it).
measure() {
	_name=$1; shift
	/usr/bin/time -f "%e %M" -o "$OUT/.time" "$@" >/dev/null 2>"$OUT/.err" || { cat "$OUT/.err" >&2; return 1; }
	set -- $(cat "$OUT/.time")
	printf '%s\t%s\t%s\n' "$_name" "$1" "$(( $2 / 1024 ))" | tee -a "$OUT/results.tsv"
}
size_gb() { du -sb "$1" | awk '{printf "%.2f", $1/1e9}'; }
