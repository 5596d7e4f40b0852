using Valley.IO;
using System.CommandLine;
using Spectre.Console;
using Valley.Data;
using Valley.Reporting;

namespace Valley.Cli.Commands;

/// <summary><c>valley info</c>: what Valley finds on this machine (LibTorch, libstdc++, data, threads).</summary>
public static class InfoCommand
{
    public static Command Build()
    {
        var format = new Option<string>("--format") { Description = "Terminal output", DefaultValueFactory = _ => "table" }.AcceptOnlyFromAmong("table", "json");
        var model = new Option<string?>("--model", "-m") { Description = "Show this model's parameters and buffers (names, shapes, counts): a TorchScript archive or a built-in spec" };
        var cmd = new Command("info", "Check the environment: LibTorch, libstdc++, Fashion-MNIST, threads; with --model, the model's parameter table") { format, model };
        cmd.SetAction(p =>
        {
            if (p.GetValue(model) is { } m) return ModelTable(m, p.GetValue(format) == "json", p.InvocationConfiguration.Output);
            var lib = TorchRuntime.CheckLibStdCxx();
            string torchStatus;
            try { TorchRuntime.EnsureLoaded(); torchStatus = $"ok (LibTorch {TorchSharp.torch.__version__}, {TorchSharp.torch.get_num_threads()} threads)"; }
            catch (ValleyException e) { torchStatus = e.Message; }
            var info = new Dictionary<string, string>
            {
                ["valley"] = typeof(Valley.Curvature.Objective).Assembly.GetName().Version?.ToString(3) ?? "?",
                ["dotnet"] = Environment.Version.ToString(),
                ["libtorch"] = torchStatus,
                ["libstdc++"] = lib is null ? "n/a" : $"{lib.Value.Path}: {(lib.Value.Ok ? "has GLIBCXX_3.4.32" : "too old (lacks GLIBCXX_3.4.32); run scripts/setup.sh")}",
                ["fashion-mnist"] = Directory.Exists(DataSources.FashionMnistFolder) ? DataSources.FashionMnistFolder : "not installed (apt-get install dataset-fashion-mnist, or scripts/setup.sh)",
                ["cores"] = Environment.ProcessorCount.ToString(),
                ["mpi"] = CommonOptions.Group.Size > 1 ? $"{CommonOptions.Group.Size} ranks (MPICH)" : MpiProcessGroup.LaunchedSize > 1 ? "launched by mpiexec" : "single process (run under mpiexec.mpich -n N to share work)",
            };
            if (p.GetValue(format) == "json") { p.InvocationConfiguration.Output.WriteLine(AtomicFile.ToJson(info)); return 0; }
            var table = new Table().AddColumn("component").AddColumn("status");
            foreach (var (k, v) in info) table.AddRow(Markup.Escape(k), Markup.Escape(v));
            CommonOptions.Terminal(json: false).Write(table);
            return torchStatus.StartsWith("ok") ? 0 : ValleyCli.ExitBadInput;
        });
        return cmd;
    }

    /// <summary>One row of the parameter table.</summary>
    public sealed record Entry(string Name, long[] Shape, long Count, string DType, bool Trainable);

    /// <summary>What <c>valley info --model</c> shows: the model's parameters and buffers under its own names.</summary>
    public sealed record ModelInfo(string Model, string Kind, string? Digest, long Parameters, List<Entry> ParameterTable, List<Entry> Buffers);

    static int ModelTable(string spec, bool json, TextWriter output)
    {
        TorchRuntime.EnsureLoaded();
        var source = new Models.ModelSource(spec);
        source.Validate();
        if (!source.IsFile)
            throw new ValleyException($"--model {spec}: a built-in spec's parameters depend on the data; run 'valley eval --model {spec}' (its PyTorch twin: {Models.ModelSpec.Parse(spec).PyTorchEquivalent()})");
        using var archive = Models.TorchScriptModel.Load(spec);
        var parameters = archive.named_parameters().Select(x => new Entry(x.name, x.parameter.shape, x.parameter.numel(), x.parameter.dtype.ToString().ToLowerInvariant(), x.parameter.requires_grad)).ToList();
        var buffers = archive.named_buffers().Select(x => new Entry(x.name, x.buffer.shape, x.buffer.numel(), x.buffer.dtype.ToString().ToLowerInvariant(), false)).ToList();
        var info = new ModelInfo(spec, "TorchScript archive", archive.Digest, parameters.Sum(e => e.Count), parameters, buffers);
        if (json) { output.WriteLine(AtomicFile.ToJson(info)); return 0; }
        var term = CommonOptions.Terminal(json: false);
        term.MarkupLine($"[bold]{Markup.Escape(spec)}[/]: TorchScript archive, {info.Parameters:N0} parameters in {parameters.Count} tensors, {buffers.Count} buffers ({Markup.Escape(archive.Digest)})");
        var t = new Table().AddColumns("parameter", "shape", "count", "dtype", "trainable");
        foreach (var e in parameters) t.AddRow(Markup.Escape(e.Name), Markup.Escape($"[{string.Join("×", e.Shape)}]"), e.Count.ToString("N0"), e.DType, e.Trainable ? "yes" : "no");
        term.Write(t);
        if (buffers.Count > 0)
        {
            var b = new Table().AddColumns("buffer", "shape", "count", "dtype");
            foreach (var e in buffers) b.AddRow(Markup.Escape(e.Name), Markup.Escape($"[{string.Join("×", e.Shape)}]"), e.Count.ToString("N0"), e.DType);
            term.Write(b);
        }
        term.MarkupLine("--layer filters by these names' prefixes; --weights files must use them.");
        return 0;
    }
}
