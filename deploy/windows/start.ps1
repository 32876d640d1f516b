#Requires -Version 5.1
<#
.SYNOPSIS
Starts the game's plugin and finetune_real.py together, and restarts them until the fine-tune is done.

.DESCRIPTION
What the startup task (register-task.ps1) runs after setup.ps1; also run by hand:

    powershell -NoProfile -ExecutionPolicy Bypass -File deploy\windows\start.ps1 `
        -Agent D:\racerl\runs\crossq-carracing -DataRoot D:\racerl

The fine-tune resumes by itself from its newest complete checkpoint in its run dir (on the
persistent volume), so starting this again after a reboot or on a replacement instance goes on
where the run was. Its exit status says what happened:
  0   done: the run dir gets a DONE file and later starts do nothing;
  75  interrupted (a spot notice, a shutdown, Ctrl-Break): checkpointed; this script stops too
      (the instance is going away; the next start resumes);
  any other: a failure (the game died, a crash): the game and the fine-tune are started again,
      at most -MaxRestarts times.
#>
param(
    # The surrogate-trained agent (a train_crossq.py run dir, its best_agent\, or a checkpoint), on the persistent volume.
    [Parameter(Mandatory = $true)][string]$Agent,
    [string]$ProjectRoot = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path,
    [string]$DataRoot = 'D:\racerl',
    [string]$RunName = 'finetune',
    # The command that serves your game's plugin; '' = the reference game (CarRacing) in -GameMode.
    [string]$GameCommand = '',
    [ValidateSet('lockstep', 'realtime')][string]$GameMode = 'lockstep',
    [double]$GameMinutes = 30,
    # More finetune_real.py options, e.g. @('--surrogate-ratio', '0.5').
    [string[]]$ExtraArgs = @(),
    [int]$MaxRestarts = 20
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$ExitInterrupted = 75  # racerl_jax.spot.EXIT_INTERRUPTED: checkpointed, run again to resume
$python = Join-Path $ProjectRoot '.venv\Scripts\python.exe'
$runDir = Join-Path $DataRoot "runs\$RunName"
$logDir = Join-Path $DataRoot 'logs'
New-Item -ItemType Directory -Force -Path $logDir | Out-Null
if (Test-Path (Join-Path $runDir 'DONE')) {
    Write-Host "$runDir is done (DONE); nothing to start"
    exit 0
}

function Start-Game {
    $stamp = Get-Date -Format 'yyyyMMdd-HHmmss'
    $out = Join-Path $logDir "game-$stamp.log"
    if ($GameCommand) {
        $game = Start-Process -FilePath 'cmd.exe' -ArgumentList @('/c', $GameCommand) -PassThru -NoNewWindow `
            -RedirectStandardOutput $out -RedirectStandardError "$out.err"
    } else {
        $game = Start-Process -FilePath $python -ArgumentList @('-m', 'bridge.games.carracing', '--mode', $GameMode) `
            -WorkingDirectory $ProjectRoot -PassThru -NoNewWindow -RedirectStandardOutput $out -RedirectStandardError "$out.err"
    }
    Start-Sleep -Seconds 5  # the plugin binds its sockets; the fine-tune also retries its first connection
    if ($game.HasExited) { throw "the game exited at once (exit code $($game.ExitCode)); see $out and $out.err" }
    return $game
}

$finetuneArgs = @('scripts\finetune_real.py', '--agent', $Agent, '--run-dir', $runDir, '--game-mode', $GameMode,
    '--game-minutes', [string]$GameMinutes, '--no-progress') + $ExtraArgs
# Start-Process joins its arguments with spaces: a path with a space in it is quoted here.
$finetuneArgs = @($finetuneArgs | ForEach-Object { if ($_ -match '\s') { '"' + $_ + '"' } else { $_ } })

$game = $null
$restarts = 0
try {
    while ($true) {
        if ($null -eq $game -or $game.HasExited) { $game = Start-Game }
        $stamp = Get-Date -Format 'yyyyMMdd-HHmmss'
        $log = Join-Path $logDir "finetune-$stamp.log"
        Write-Host "finetune_real.py -> $log"
        $ft = Start-Process -FilePath $python -ArgumentList $finetuneArgs -WorkingDirectory $ProjectRoot -PassThru `
            -NoNewWindow -Wait -RedirectStandardOutput $log -RedirectStandardError "$log.err"
        $code = $ft.ExitCode
        if ($code -eq 0) {
            Set-Content -Path (Join-Path $runDir 'DONE') -Value (Get-Content $log -Tail 1)
            Write-Host "done: $(Get-Content $log -Tail 1)"
            break
        }
        if ($code -eq $ExitInterrupted) {
            Write-Host 'interrupted (spot notice or shutdown): checkpointed; the next start resumes'
            break
        }
        $restarts += 1
        if ($restarts -gt $MaxRestarts) { throw "finetune_real.py failed $restarts times; the last log: $log.err" }
        Write-Warning "finetune_real.py exited with $code (restart $restarts of $MaxRestarts); see $log.err"
        Start-Sleep -Seconds 10
    }
} finally {
    if ($null -ne $game -and -not $game.HasExited) { Stop-Process -Id $game.Id -Force }
}
