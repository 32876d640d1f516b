#Requires -Version 5.1
<#
.SYNOPSIS
Registers the Task Scheduler task that sets up and starts the fine-tune at every boot.

.DESCRIPTION
Run once, as Administrator, after setup.ps1:

    powershell -NoProfile -ExecutionPolicy Bypass -File deploy\windows\register-task.ps1 `
        -Agent D:\racerl\runs\crossq-carracing -DataRoot D:\racerl

At startup the task runs setup.ps1 (quick when all is there; Python again on a new system disk)
and start.ps1, as SYSTEM without a desktop: enough for the reference game in lockstep. A game that
needs a desktop: -AtLogOn -User NAME (and Windows set to log that user on automatically).
#>
param(
    [Parameter(Mandatory = $true)][string]$Agent,
    [string]$ProjectRoot = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path,
    [string]$DataRoot = 'D:\racerl',
    [string]$TaskName = 'racerl-finetune',
    # Passed to start.ps1 as they are, e.g. '-GameMinutes 60 -GameMode realtime'.
    [string]$StartArgs = '',
    [switch]$AtLogOn,
    [string]$User = ''
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$setup = Join-Path $PSScriptRoot 'setup.ps1'
$start = Join-Path $PSScriptRoot 'start.ps1'
$command = "& '$setup' -ProjectRoot '$ProjectRoot' -DataRoot '$DataRoot'; " +
    "& '$start' -Agent '$Agent' -ProjectRoot '$ProjectRoot' -DataRoot '$DataRoot' $StartArgs"
$action = New-ScheduledTaskAction -Execute 'powershell.exe' -WorkingDirectory $ProjectRoot `
    -Argument "-NoProfile -ExecutionPolicy Bypass -Command `"$command`""
if ($AtLogOn) {
    if (-not $User) { throw '-AtLogOn needs -User: the account that logs on and runs the game' }
    $trigger = New-ScheduledTaskTrigger -AtLogOn -User $User
    $principal = New-ScheduledTaskPrincipal -UserId $User -LogonType Interactive -RunLevel Highest
} else {
    $trigger = New-ScheduledTaskTrigger -AtStartup
    $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
}
# No time limit (a fine-tune runs for hours); started late if the machine was off at the trigger.
$settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) -StartWhenAvailable `
    -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 1)
Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Principal $principal `
    -Settings $settings -Force | Out-Null
Write-Host "Registered $TaskName; start it now with: Start-ScheduledTask -TaskName $TaskName"
