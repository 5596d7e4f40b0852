#!/usr/bin/env bash
# Packs the Valley library (NuGet package `Valley`) and the `valley` .NET tool (package `Valley.Cli`, for this machine's
# runtime identifier: LibTorch's native libraries are large, so the tool package carries only one platform's), then
# installs the tool from the local package folder into a temporary tool path and runs it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
out="$root/artifacts/packages"
rm -rf "$out"; mkdir -p "$out"
rid="$(dotnet --info | awk '/RID:/ {print $2; exit}')"
dotnet pack src/Valley/Valley.csproj -c Release -o "$out" -nologo -v:q
dotnet pack src/Valley.Cli/Valley.Cli.csproj -c Release -r "$rid" -o "$out" -nologo -v:q
ls -la "$out"
tools="$(mktemp -d)"
dotnet tool install Valley.Cli --tool-path "$tools" --add-source "$out" --version "$(grep -oP '(?<=<Version>)[^<]+' Directory.Build.props)"
"$tools/valley" --help | head -n 5
"$tools/valley" info
echo "pack: the valley tool installed from $out and ran"
