#!/usr/bin/env bash
# Packs Valley's libraries (`Valley`, the core on TorchSharp; `Valley.Reporting`; `Valley.Mpi`; `Valley.Study`) and the
# `valley` .NET tool (package `Valley.Cli`, for this machine's runtime identifier: LibTorch's native libraries are large,
# so the tool package carries only one platform's), then installs the tool from the local package folder into a
# temporary tool path and runs it. Every pack gets its own version: 0.2.0-build.N, N the number of commits.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
out="$root/artifacts/packages"
rm -rf "$out"; mkdir -p "$out"
rid="$(dotnet --info | awk '/RID:/ {print $2; exit}')"
suffix="build.$(git -C "$root" rev-list --count HEAD 2>/dev/null || echo 0)"
prefix="$(grep -oP '(?<=<VersionPrefix>)[^<]+' Directory.Build.props)"
for project in Valley Valley.Reporting Valley.Mpi Valley.Study; do
  dotnet pack "src/$project/$project.csproj" -c Release -o "$out" -nologo -v:q -p:VersionSuffix="$suffix"
done
dotnet pack src/Valley.Cli/Valley.Cli.csproj -c Release -r "$rid" -o "$out" -nologo -v:q -p:VersionSuffix="$suffix"
ls -la "$out"
tools="$(mktemp -d)"; trap 'rm -rf "$tools"' EXIT
dotnet tool install Valley.Cli --tool-path "$tools" --add-source "$out" --version "$prefix-$suffix"
"$tools/valley" --help | head -n 5
"$tools/valley" info
echo "pack: the valley tool installed from $out and ran"
