export { BackupManager, commitInfo, runPosition, type BackupManagerOptions, type HistoryCheck, type ManagerStatus } from './backup-manager';
export { ManagerCatalog, type AppliedPointer, type ManagerConfig, type VolumeEntry } from './catalog';
export * from './types';
