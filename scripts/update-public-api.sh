#!/usr/bin/env bash
# Brings the libraries' PublicAPI.Unshipped.txt in line with the code after an intended change of the public API:
# builds, adds every symbol the analyzer reports as new (RS0016) and removes every declared symbol that is gone (RS0017).
# Review the diff of the PublicAPI files before committing: it is the change of the API that users will see.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
dotnet build Valley.sln -c Release -p:TreatWarningsAsErrors=false -p:WarningsAsErrors= >"$log" 2>&1 || true
for project in src/*/; do
  file="${project}PublicAPI.Unshipped.txt"
  [ -f "$file" ] || continue
  name=$(basename "$project")
  # RS0017 names the baseline file and the line; RS0016 names the source file under the project.
  grep -F "${file}(" "$log" | grep -F "RS0017" | sed -E "s/.*Symbol '(.*)' is part of the declared API.*/\1/" | sort -u > "$log.gone" || true
  grep -E "/src/${name}/[^(]*\.cs\([0-9]+,[0-9]+\): (warning|error) RS0016" "$log" \
    | sed -E "s/.*Symbol '(.*)' is not part of the declared public API.*/\1/" | sort -u > "$log.new" || true
  if [ -s "$log.gone" ]; then grep -vxF -f "$log.gone" "$file" > "$file.tmp" || true; mv "$file.tmp" "$file"; fi
  cat "$log.new" >> "$file"
  echo "$name: $(wc -l < "$log.new") added, $(wc -l < "$log.gone") removed"
  rm -f "$log.gone" "$log.new"
done
