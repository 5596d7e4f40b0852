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
        var cmd = new Command("info", "Check the environment: LibTorch, libstdc++, Fashion-MNIST, threads") { format };
        cmd.SetAction(p =>
        {
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
}
