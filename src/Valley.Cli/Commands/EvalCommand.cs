using Valley.IO;
using System.CommandLine;
using Spectre.Console;
using Valley.Reporting;

namespace Valley.Cli.Commands;

/// <summary><c>valley eval</c>: loss, accuracy and gradient norm of a model over its training subset and the test set.</summary>
public static class EvalCommand
{
    public sealed record Result(string Model, string Data, long Parameters, double TrainLoss, double? TrainAccuracy, long TrainExamples,
        double? TestLoss, double? TestAccuracy, long? TestExamples, double GradientNorm, double Seconds);

    public static Command Build()
    {
        var o = new CommonOptions();
        var cmd = new Command("eval", "Loss, accuracy and full-data gradient norm of a model (train subset and test set)");
        o.AddTo(cmd);
        cmd.SetAction((p, ct) =>
        {
            var (_, ctx) = o.Prepare(p, outDir: null);
            using var _ctx = ctx;
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var train = ctx.Objective.Evaluate(ct);
            var test = ctx.Test is { } t ? ctx.Objective.Evaluate(t, ct) : null;
            var (_, grad) = ctx.Objective.LossAndGradient(ct);
            var result = new Result(p.GetValue(o.Model)!, ctx.Train.ToString(), ctx.Objective.Size, train.Loss, train.Accuracy, train.Examples,
                test?.Loss, test?.Accuracy, test?.Examples, TorchSharp.TensorExtensionMethods.ToDouble(grad.norm()), sw.Elapsed.TotalSeconds);
            grad.Dispose();
            if (CommonOptions.Json(p, o)) { p.InvocationConfiguration.Output.WriteLine(AtomicFile.ToJson(result)); return Task.FromResult(0); }
            var table = new Table().AddColumns("split", "examples", "loss", "accuracy");
            table.AddRow("train", train.Examples.ToString(), $"{train.Loss:G6}", train.Accuracy is { } a ? $"{100 * a:F2}%" : "-");
            if (test is not null) table.AddRow("test", test.Examples.ToString(), $"{test.Loss:G6}", test.Accuracy is { } b ? $"{100 * b:F2}%" : "-");
            var term = CommonOptions.Terminal(json: false);
            term.MarkupLine($"[bold]{Markup.Escape(result.Model)}[/] ({result.Parameters:N0} parameters) on {Markup.Escape(result.Data)}");
            term.Write(table);
            term.MarkupLine($"full-data gradient norm ‖∇L‖ = {result.GradientNorm:G6}   ({result.Seconds:F1} s)");
            return Task.FromResult(0);
        });
        return cmd;
    }
}
